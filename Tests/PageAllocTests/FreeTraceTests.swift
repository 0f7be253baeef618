import Testing

@testable import PageAlloc
import PageAllocTestSupport

/// The free path's trace events and page-state rules as `__free_pages_prepare()` and
/// `free_unref_folios()` have them: mm_page_free before any check, mlocked pages cleared
/// and freed, and the batched free with its mm_page_free_batched events.
@Suite(.serialized) struct FreeTraceTests {
  func setUp() throws -> (PageAllocator, TraceBuffer) {
    let (a, t) = try makeTracedAllocator(pages: 65536, cpus: 1)
    PageAllocator.setThreadCPU(0)
    return (a, t)
  }

  func frees(_ t: TraceBuffer) -> [String] {
    t.snapshot.filter { $0.kind == .pageFree || $0.kind == .pageFreeBatched }.map {
      "\($0.kind == .pageFree ? "free" : "batched") \($0.pfn!.value)/\($0.order)"
    }
  }

  /// mm_page_free comes first in __free_pages_prepare(): a page in a bad state is traced,
  /// then reported.
  @Test func mmPageFreeFiresBeforeTheBadPageCheck() throws {
    let (a, t) = try setUp()
    defer { PageAllocator.setThreadCPU(nil) }
    let p = try #require(a.allocPages(order: 0, gfp: .kernel))
    a.setPageFlags(p, .locked)
    t.removeAll()
    a.freePages(p, order: 0)
    #expect(frees(t) == ["free \(p.value)/0"])
    #expect(a.badPageCount == 1)
    try a.verify()
  }

  /// An order-0 HWPoison page is traced, then kept off the lists without a report.
  @Test func hwpoisonedPageIsTracedThenKeptOff() throws {
    let (a, t) = try setUp()
    defer { PageAllocator.setThreadCPU(nil) }
    let p = try #require(a.allocPages(order: 0, gfp: .kernel))
    a.setPageFlags(p, .hwpoison)
    t.removeAll()
    a.freePages(p, order: 0)
    #expect(frees(t) == ["free \(p.value)/0"])
    #expect(a.badPageCount == 0 && a.hwpoisonedPageCount == 1)
    try a.verify()
  }

  /// A block with a bad page is traced once, at its order, as the kernel traces it before
  /// it finds the bad tail; the pages PageAlloc salvages from it are not traced again.
  @Test func aBadBlockIsTracedOnceAtItsOrder() throws {
    let (a, t) = try setUp()
    defer { PageAllocator.setThreadCPU(nil) }
    let p = try #require(a.allocPages(order: 2, gfp: .kernel))
    a.setPageFlags(p + 1, .locked)
    t.removeAll()
    a.freePages(p, order: 2)
    #expect(frees(t) == ["free \(p.value)/2"])
    #expect(a.badPageCount == 1)
    #expect(a.quarantinedPageCount == 1)
    try a.verify()
  }

  /// A mlocked page is not a bad page: the flag is cleared (UNEVICTABLE_PGCLEARED counts
  /// the pages) and the page is freed.
  @Test func mlockedPagesAreClearedAndFreed() throws {
    let (a, t) = try setUp()
    defer { PageAllocator.setThreadCPU(nil) }
    let p = try #require(a.allocPages(order: 0, gfp: .kernel))
    let q = try #require(a.allocPages(order: 2, gfp: [.kernel, .comp]))
    a.setPageFlags(p, .mlocked)
    a.setPageFlags(q, .mlocked)
    t.removeAll()
    a.freePages(p, order: 0)
    a.freePages(q, order: 2)
    #expect(frees(t) == ["free \(p.value)/0", "free \(q.value)/2"])
    #expect(a.badPageCount == 0 && a.quarantinedPageCount == 0)
    #expect(a.mlockedPagesCleared == 5)
    #expect(a.pcpBlocks().contains { $0.pfn == p } && a.pcpBlocks().contains { $0.pfn == q })
    a.drainAllPages()
    #expect(a.freePageCount == a.managedPageCount)
    try a.verify()
  }

  /// free_unref_folios(): every page's mm_page_free first (the prepare phase), then, page
  /// by page, mm_page_free_batched (printed with order=0 whatever the order) and the pcp
  /// free. A page still referenced is left alone; a bad page is traced and reported but
  /// not batched.
  @Test func batchedFreeTracesEveryFreeThenEveryBatchedEvent() throws {
    let (a, t) = try setUp()
    defer { PageAllocator.setThreadCPU(nil) }
    var pages: [PFN] = []
    for _ in 0..<5 { pages.append(try #require(a.allocPages(order: 0, gfp: .kernel))) }
    a.getPage(pages[1])  // still referenced after the batch drops one reference
    a.setPageFlags(pages[3], .private)  // bad
    t.removeAll()
    a.freePagesBatched(pages)
    let v = pages.map(\.value)
    #expect(
      frees(t) == [
        "free \(v[0])/0", "free \(v[2])/0", "free \(v[3])/0", "free \(v[4])/0", "batched \(v[0])/0",
        "batched \(v[2])/0", "batched \(v[4])/0",
      ])
    let batched = try #require(t.snapshot.first { $0.kind == .pageFreeBatched })
    #expect(
      batched.formatted == "mm_page_free_batched: page=\(batched.pagePointer) pfn=0x\(String(v[0], radix: 16)) order=0")
    #expect(a.badPageCount == 1)
    #expect(a.refcount(of: pages[1]) == 1)
    #expect(Set(a.pcpBlocks().map(\.pfn)).isSuperset(of: [pages[0], pages[2], pages[4]]))
    try a.verify()
  }

  /// Orders the pcp does not take are freed straight to the buddy in the prepare phase,
  /// with no mm_page_free_batched; pcp orders print order=0 in the batched event.
  @Test func batchedFreeOfHighOrders() throws {
    let (a, t) = try setUp()
    defer { PageAllocator.setThreadCPU(nil) }
    let big = try #require(a.allocPages(order: 4, gfp: [.kernel, .comp]))
    let thp = try #require(a.allocPages(order: 2, gfp: [.kernel, .comp]))
    t.removeAll()
    a.freePagesBatched([big], order: 4)
    a.freePagesBatched([thp], order: 2)
    #expect(frees(t) == ["free \(big.value)/4", "free \(thp.value)/2", "batched \(thp.value)/0"])
    #expect(!a.pcpBlocks().contains { $0.pfn == big })
    #expect(a.pcpBlocks().contains { $0.pfn == thp && $0.order == 2 })
    try a.verify()
  }
}

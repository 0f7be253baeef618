import Testing

@testable import PageAlloc
import PageAllocTestSupport

/// The kmem trace events fire where the kernel fires them, in ftrace's text format.
@Suite(.serialized) struct TraceEventTests {
  /// __free_contig_range: mm_page_free per order-0 page from free_pages_prepare(page, 0),
  /// nothing for the FPI_PREPARED chunk.
  @Test func freeContigRangeTracesEveryPageNotTheChunk() throws {
    let (a, t) = try makeTracedAllocator()
    let p = try #require(a.allocPages(order: 9, gfp: .kernel))
    a.splitPage(p, order: 9)
    t.removeAll()
    a.freeContigRange(p, count: 512)
    let frees = t.snapshot.filter { $0.kind == .pageFree }
    #expect(frees.count == 512)
    #expect(frees.allSatisfy { $0.order == 0 })
    #expect(frees.map { $0.pfn! } == (0..<512).map { p + $0 })
    #expect(!t.snapshot.contains { $0.kind == .pageAlloc || $0.kind == .pageAllocZoneLocked })
    try a.verify()
  }

  /// __free_pages of a block: one mm_page_free with the block's order.
  @Test func freePagesTracesTheBlockOnce() throws {
    let (a, t) = try makeTracedAllocator()
    let p = try #require(a.allocPages(order: 5, gfp: .kernel))
    t.removeAll()
    a.freePages(p, order: 5)
    #expect(t.snapshot == [TraceEvent(kind: .pageFree, pfn: p, order: 5, cpu: 0)])
  }

  /// A pcp refill takes blocks through __rmqueue_smallest (mm_page_alloc_zone_locked with
  /// percpu_refill=1), then the allocation traces mm_page_alloc; a non-pcp order traces
  /// zone_locked with percpu_refill=0.
  @Test func allocTracesZoneLockedThenAlloc() throws {
    let (a, t) = try makeTracedAllocator()
    PageAllocator.setThreadCPU(0)
    defer { PageAllocator.setThreadCPU(nil) }
    let p = try #require(a.allocPages(order: 0, gfp: .highUserMovable))
    let ev = t.snapshot
    let locked = ev.filter { $0.kind == .pageAllocZoneLocked }
    #expect(!locked.isEmpty)
    #expect(locked.allSatisfy { $0.order == 0 && $0.migrateType == 1 && $0.percpuRefill })
    #expect(ev.last == TraceEvent(kind: .pageAlloc, pfn: p, order: 0, migrateType: 1, gfp: .highUserMovable, cpu: 0))
    #expect(ev.last!.formatted.hasSuffix("order=0 migratetype=1 gfp_flags=GFP_HIGHUSER_MOVABLE"))
    t.removeAll()
    let q = try #require(a.allocPages(order: 4, gfp: .highUserMovable))
    #expect(t.snapshot.map(\.kind) == [.pageAllocZoneLocked, .pageAlloc])
    #expect(t.snapshot[0].percpuRefill == false && t.snapshot[0].pfn == q)
  }

  /// A failed allocation traces mm_page_alloc with a NULL page (pfn printed as 0).
  @Test func failedAllocTracesNullPage() throws {
    let (a, t) = try makeTracedAllocator()
    while a.allocPages(order: 10, gfp: [.kernel, .noWarn]) != nil {}
    let last = try #require(t.snapshot.last)
    #expect(last.kind == .pageAlloc && last.pfn == nil)
    #expect(
      last.formatted
        == "mm_page_alloc: page=0000000000000000 pfn=0x0 order=10 migratetype=0 gfp_flags=GFP_KERNEL|__GFP_NOWARN")
  }

  /// should_fail_alloc_page() fails in prepare_alloc_pages(), before the trace point.
  @Test func injectedFailureIsNotTraced() throws {
    let (a, t) = try makeTracedAllocator()
    a.setFaultInjection(FaultInjection(probability: 100))
    #expect(a.allocPages(order: 0, gfp: .kernel) == nil)
    #expect(t.snapshot.isEmpty)
  }

  /// free_pcppages_bulk: mm_page_pcpu_drain per block, with its order and pageblock type.
  @Test func pcpDrainTracesEachBlock() throws {
    let (a, t) = try makeTracedAllocator()
    PageAllocator.setThreadCPU(0)
    defer { PageAllocator.setThreadCPU(nil) }
    let p = try #require(a.allocPages(order: 3, gfp: .kernel))
    let q = try #require(a.allocPages(order: 0, gfp: .kernel))
    a.freePages(p, order: 3)
    a.freePages(q, order: 0)
    let pcpBlocks = a.pcpBlocks()
    #expect(!pcpBlocks.isEmpty)
    t.removeAll()
    a.drainAllPages()
    let drains = t.snapshot.filter { $0.kind == .pagePcpuDrain }
    #expect(drains.count == pcpBlocks.count)
    #expect(Set(drains.map { "\($0.pfn!)/\($0.order)" }) == Set(pcpBlocks.map { "\($0.pfn)/\($0.order)" }))
    #expect(drains.allSatisfy { $0.migrateType == 0 })
    try a.verify()
  }

  @Test func noEventsAfterTheSinkIsRemoved() throws {
    let (a, t) = try makeTracedAllocator()
    a.setTraceSink(nil)
    let p = try #require(a.allocPages(order: 2, gfp: .kernel))
    a.freePages(p, order: 2)
    a.drainAllPages()
    #expect(t.snapshot.isEmpty)
  }

  /// TP_printk formats, and the trace file's line layout.
  @Test func formats() {
    let p = PFN(0x104722)
    let page = TraceEvent(kind: .pageFree, pfn: p, order: 0).pagePointer
    #expect(page.count == 16 && page != "0000000000000000")
    #expect(
      TraceEvent(kind: .pageFree, pfn: p, order: 2).formatted == "mm_page_free: page=\(page) pfn=0x104722 order=2")
    #expect(
      TraceEvent(kind: .pageFreeBatched, pfn: p, order: 0).formatted
        == "mm_page_free_batched: page=\(page) pfn=0x104722 order=0")
    #expect(
      TraceEvent(kind: .pageAllocZoneLocked, pfn: p, order: 1, migrateType: 2, percpuRefill: true).formatted
        == "mm_page_alloc_zone_locked: page=\(page) pfn=0x104722 order=1 migratetype=2 percpu_refill=1")
    #expect(
      TraceEvent(kind: .pagePcpuDrain, pfn: p, order: 9, migrateType: 1).formatted
        == "mm_page_pcpu_drain: page=\(page) pfn=0x104722 order=9 migratetype=1")
    #expect(
      TraceEvent(kind: .pageAlloc, pfn: p, order: 0, migrateType: 0, gfp: [.kernelAccount, .zero, .comp]).formatted
        == "mm_page_alloc: page=\(page) pfn=0x104722 order=0 migratetype=0 gfp_flags=GFP_KERNEL_ACCOUNT|__GFP_ZERO|__GFP_COMP"
    )
    #expect(TraceEvent(kind: .pageAlloc, pfn: p, order: 0).formatted.hasSuffix("gfp_flags=none"))
    let line = TraceEvent(kind: .pageFree, pfn: p, order: 0, cpu: 1).ftraceLine(
      task: "bash", pid: 20222, timestamp: 2070.739071)
    #expect(
      line == "            bash-20222   [001] .....  2070.739071: mm_page_free: page=\(page) pfn=0x104722 order=0")
  }

  /// The other chunked frees trace like freeContigRange: freePagesBulk and
  /// freeContigFrozenRange, one mm_page_free of order 0 per page, in the order freed.
  @Test func bulkAndFrozenRangeTraceEveryPage() throws {
    let (a, t) = try makeTracedAllocator()
    try claimExactly(a, 0x100..<0x110)
    let shuffled = [0x108, 0x109, 0x10a, 0x10b, 0x10c, 0x10d, 0x10e, 0x10f, 0x100, 0x101, 0x102, 0x103]
    t.removeAll()
    a.freePagesBulk(shuffled.map { PFN($0) })
    #expect(t.snapshot == shuffled.map { TraceEvent(kind: .pageFree, pfn: PFN($0), order: 0, cpu: 0) })
    try a.allocContigFrozenRange(PFN(0x2003)..<PFN(0x2010), gfp: .kernel)
    t.removeAll()
    a.freeContigFrozenRange(0x2003, count: 13)
    #expect(t.snapshot == (0x2003..<0x2010).map { TraceEvent(kind: .pageFree, pfn: PFN($0), order: 0, cpu: 0) })
    try a.verify()
  }

  /// alloc_pages_bulk: one mm_page_alloc per page it returns.
  @Test func allocPagesBulkTracesEachPage() throws {
    let (a, t) = try makeTracedAllocator()
    var pages: [PFN] = []
    #expect(a.allocPagesBulk(count: 20, gfp: .kernel, into: &pages) == 20)
    let allocs = t.snapshot.filter { $0.kind == .pageAlloc }
    #expect(allocs.map { $0.pfn! } == pages)
    #expect(allocs.allSatisfy { $0.order == 0 })
  }

  /// An order above MAX_PAGE_ORDER fails before the trace point (the kernel warns and
  /// returns NULL at the top of __alloc_frozen_pages).
  @Test func anOrderAboveTenIsNotTraced() throws {
    let (a, t) = try makeTracedAllocator()
    #expect(a.allocPages(order: 11, gfp: [.kernel, .noWarn]) == nil)
    #expect(t.snapshot.isEmpty)
  }

  /// A block stolen from a fallback type does not go through __rmqueue_smallest: no
  /// mm_page_alloc_zone_locked, only mm_page_alloc_extfrag (one per block the refill
  /// stole, fragmenting, without change of ownership), then the allocation.
  @Test func aStolenBlockIsNotTracedAsZoneLocked() throws {
    var types = [Int: MigrateType]()
    for pb in 0..<16 { types[pb] = .unmovable }
    let a = try MigratetypeFallbackTests().shaped(types, free: (0..<8).map { ($0 * 512)..<($0 * 512 + 200) })
    let t = TraceBuffer()
    a.setTraceSink(t)
    let before = a.zoneStatistics()[0].fallbackAllocs
    let p = try #require(a.allocPages(order: 0, gfp: .highUserMovable))
    #expect(a.zoneStatistics()[0].fallbackAllocs > before)
    let kinds = t.snapshot.map(\.kind)
    #expect(!kinds.contains(.pageAllocZoneLocked))
    #expect(kinds.last == .pageAlloc && kinds.dropLast().allSatisfy { $0 == .pageAllocExtfrag } && kinds.count > 1)
    #expect(t.snapshot.last?.pfn == p)
    #expect(t.snapshot.dropLast().allSatisfy { $0.formatted.hasSuffix("fragmenting=1 change_ownership=0") })
  }
}

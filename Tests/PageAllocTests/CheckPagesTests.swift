@testable import PageAlloc
import PageAllocStress
import Testing
import PageAllocTestSupport
import _PageAllocUtilities

/// `Configuration.checkPages` (CONFIG_DEBUG_VM's page checks) and the free without it: what
/// each setting catches, and that no bad free reaches a free list in either.
@Suite struct CheckPagesTests {
  /// The kernel's default: off.
  @Test func offByDefaultAndOnWithPoisoning() throws {
    #expect(!PageAllocator.Configuration.normal(pages: 4096).checkPages)
    let plain = try makeAllocator(pages: 4096, checkPages: false)
    #expect(!plain.checksPages)
    let checked = try makeAllocator(pages: 4096, checkPages: true)
    #expect(checked.checksPages)
    // Page poisoning turns the checks on, as mem_debugging_and_hardening_init() does.
    let poisoned = try makeAllocator(pages: 4096, backing: .anonymous, poison: true, checkPages: false)
    #expect(poisoned.checksPages)
  }

  /// Without the checks a non-compound block's free reads the head's record only: a tail
  /// record broken behind the allocator's back (no API call can do this) goes unseen. With
  /// them the same free finds it.
  @Test(arguments: [false, true])
  func theFreeReadsTailsOnlyWithTheChecks(_ checks: Bool) throws {
    let a = try makeAllocator(checkPages: checks)
    let p = try #require(a.allocPages(order: 9, gfp: .kernel))
    let tail = a.memMap.presentRecord(p.value + 300)
    tail.pointee.flags.store(PG.locked, ordering: .relaxed)
    a.freePages(p, order: 9)
    if checks {
      #expect(a.badPageCount == 1)
      #expect(a.badPageReports.first?.pfn == p + 300)
      #expect(a.badPageReports.first?.reason == "PAGE_FLAGS_CHECK_AT_FREE flag(s) set")
      #expect(a.isQuarantined(p + 300))
      try a.verify()
    } else {
      #expect(a.badPageCount == 0)
      // The broken record now lies inside a free block: verify() says so.
      #expect(throws: VerificationError.self) { try a.verify() }
      tail.pointee.flags.store(0, ordering: .relaxed)
      try a.verify()
    }
  }

  /// A compound page's tails, likewise: without the checks its free writes them back to
  /// clean without reading them (free_tail_page_prepare() with the checks off), so a broken
  /// tail record goes unseen and is simply overwritten.
  @Test(arguments: [false, true])
  func aCompoundFreeReadsTailsOnlyWithTheChecks(_ checks: Bool) throws {
    let a = try makeAllocator(checkPages: checks)
    let p = try #require(a.allocPages(order: 9, gfp: [.kernel, .comp]))
    a.memMap.presentRecord(p.value + 77).pointee.flags.store(PG.tail | PG.writeback, ordering: .relaxed)
    a.freePages(p, order: 9)
    #expect(a.badPageCount == (checks ? 1 : 0))
    #expect(a.isQuarantined(p + 77) == checks)
    try a.verify()
    a.drainAllPages()
    #expect(a.freePageCount + a.quarantinedPageCount == a.managedPageCount)
  }

  /// Compound tails reached through their own pfns (a range free drops a reference each
  /// tail does not hold: quarantined) mark the page, whose free then keeps them out.
  @Test(arguments: [false, true])
  func compoundTailsQuarantinedThroughTheirPFNsStayOut(_ checks: Bool) throws {
    let a = try makeAllocator(checkPages: checks)
    let m = try #require(a.allocPages(order: 9, gfp: [.kernel, .comp]))
    a.freeContigRange(m + 10, count: 4)
    #expect(a.badPageCountsByKind[.refcountUnderflow] == 4)
    a.freePages(m, order: 9)
    for i in 10..<14 { #expect(a.isQuarantined(m + i)) }
    #expect(a.quarantinedPageCount == 4)
    a.drainAllPages()
    try a.verify()
    #expect(a.freePageCount + a.quarantinedPageCount == a.managedPageCount)
  }

  /// What the free without the checks still catches: everything about the head, and a
  /// block part of which was freed or quarantined through a tail's pfn (the call marks the
  /// block). A flag a caller set on a tail is cleared without a report, as the kernel's
  /// free clears it; with the checks the page is reported and quarantined.
  @Test(arguments: [false, true])
  func whatEachSettingCatches(_ checks: Bool) throws {
    let a = try makeAllocator(checkPages: checks)
    PageAllocator.setThreadCPU(0)
    defer { PageAllocator.setThreadCPU(nil) }

    // The head: a double free, a wrong order, a flag on the head, a frozen free of a
    // referenced head.
    let b = try #require(a.allocPages(order: 9, gfp: .kernel))
    a.freePages(b, order: 8)
    #expect(a.badPageReports.last?.kind == .wrongOrder)
    a.freePages(b, order: 9)
    a.freePages(b, order: 9)
    #expect(a.badPageReports.last?.kind == .doubleFree)
    let c = try #require(a.allocPages(order: 9, gfp: .kernel))
    a.freeFrozenPages(c, order: 9)
    #expect(a.badPageReports.last?.kind == .nonzeroRefcount)
    let d = try #require(a.allocPages(order: 9, gfp: .kernel))
    a.setPageFlags(d, .locked)
    a.freePages(d, order: 9)
    #expect(a.badPageReports.last?.kind == .badState)
    #expect(a.isQuarantined(d))
    #expect(a.badPageCount == 4)
    try a.verify()

    // A tail freed behind the owner's back (frozen, as its refcount 0 allows), then the
    // block: the freed page is reported, not freed a second time.
    let e = try #require(a.allocPages(order: 9, gfp: .kernel))
    a.freeFrozenPages(e + 17, order: 0)
    try a.verify()
    a.freePages(e, order: 9)
    #expect(a.badPageReports.last?.kind == .doubleFree)
    #expect(a.badPageCount == 5)
    try a.verify()

    // A frozen range starting at a tail, then the block.
    let f = try #require(a.allocPages(order: 9, gfp: .kernel))
    a.freeContigFrozenRange(f + 64, count: 64)
    a.freePages(f, order: 9)
    #expect(a.badPageCount == 6)
    try a.verify()

    // putPage of a tail: a refcount underflow, the tail quarantined; the block's free
    // keeps it out.
    let g = try #require(a.allocPages(order: 9, gfp: .kernel))
    a.putPage(g + 5)
    #expect(a.badPageReports.last?.kind == .refcountUnderflow)
    #expect(a.isQuarantined(g + 5))
    let before = a.badPageCount
    a.freePages(g, order: 9)
    #expect(a.isQuarantined(g + 5))
    #expect(a.badPageCount == before + 1)  // "quarantined page", once
    try a.verify()

    // A flag on a tail: the setting decides.
    let h = try #require(a.allocPages(order: 9, gfp: .kernel))
    a.setPageFlags(h + 100, .locked)
    let beforeTail = a.badPageCount
    a.freePages(h, order: 9)
    if checks {
      #expect(a.badPageCount == beforeTail + 1)
      #expect(a.badPageReports.last?.kind == .badState)
      #expect(a.isQuarantined(h + 100))
    } else {
      #expect(a.badPageCount == beforeTail)
      #expect(!a.isQuarantined(h + 100))
      #expect(a.pageFlags(of: h + 100) == [])
    }
    try a.verify()

    // A hardware-poisoned tail is kept out of use in either setting, without a report.
    let k = try #require(a.allocPages(order: 9, gfp: .kernel))
    a.setPageFlags(k + 200, .hwpoison)
    let beforePoison = a.badPageCount
    a.freePages(k, order: 9)
    #expect(a.badPageCount == beforePoison)
    #expect(a.isQuarantined(k + 200))
    try a.verify()

    // A flag on a compound tail: compound tails are always read.
    let m = try #require(a.allocPages(order: 9, gfp: [.kernel, .comp]))
    a.setPageFlags(m + 3, .lru)
    let beforeCompound = a.badPageCount
    a.freePages(m, order: 9)
    #expect(a.badPageCount == beforeCompound + (checks ? 1 : 0))
    #expect(a.isQuarantined(m + 3) == checks)
    try a.verify()

    a.drainAllPages()
    try a.verify()
    // All back but the tails of `c`, whose quarantined head no free can name any more.
    #expect(a.freePageCount + a.quarantinedPageCount == a.managedPageCount - 511)
  }

  /// A flag set on a tail survives split_page() (the tail is an order-0 page then, judged
  /// by its own free), and the block's mark does not.
  @Test(arguments: [false, true])
  func splitDropsTheMark(_ checks: Bool) throws {
    let a = try makeAllocator(checkPages: checks)
    let p = try #require(a.allocPages(order: 3, gfp: .kernel))
    a.setPageFlags(p + 2, .private)
    a.splitPage(p, order: 3)
    #expect(a.pageFlags(of: p) == [])
    for i in 0..<8 { a.putPage(p + i) }
    #expect(a.badPageCount == 1)
    #expect(a.badPageReports.first?.pfn == p + 2)
    a.drainAllPages()
    try a.verify()
    #expect(a.freePageCount + a.quarantinedPageCount == a.managedPageCount)
  }

  /// The tail halves freed under a speculative reference are read whole when the block
  /// was marked.
  @Test(arguments: [false, true])
  func speculativeReferenceAfterATailWasFreed(_ checks: Bool) throws {
    let a = try makeAllocator(checkPages: checks)
    let p = try #require(a.allocPages(order: 6, gfp: .kernel))
    a.freeFrozenPages(p + 40, order: 0)
    a.getPage(p)
    a.freePages(p, order: 6)
    try a.verify()
    #expect(a.putPage(p))
    a.drainAllPages()
    try a.verify()
    #expect(a.freePageCount + a.quarantinedPageCount == a.managedPageCount)
  }

  /// fuzz (checks off) 931a6be4: a frozen range freed pages of a block, a block allocated
  /// again there, and the first block's split gave the new block's tails a reference each:
  /// freed as the split's pages, they went to the free lists under a block whose free does
  /// not read its tails. The split now leaves a block allocated inside alone.
  @Test(arguments: [false, true])
  func splitLeavesABlockAllocatedInsideAlone(_ checks: Bool) throws {
    let a = try makeAllocator(checkPages: checks)
    PageAllocator.setThreadCPU(0)
    defer { PageAllocator.setThreadCPU(nil) }
    let p = try #require(a.allocPages(order: 4, gfp: .kernel))
    a.freeContigFrozenRange(p + 4, count: 4)  // one order-2 chunk, to this CPU's pcp list
    let q = try #require(a.allocPages(order: 2, gfp: .kernel))
    #expect(q == p + 4)
    a.splitPage(p, order: 4)
    #expect(a.badPageReports.last?.reason == "split_page of a block with a page allocated again")
    for i in 5..<8 { #expect(a.refcount(of: p + i) == 0) }
    a.freeContigRange(p, count: 4)
    a.freeContigRange(p + 8, count: 8)
    a.freePages(q, order: 2)
    a.drainAllPages()
    try a.verify()
    #expect(a.freePageCount + a.quarantinedPageCount == a.managedPageCount)
  }

  /// check_new_pages(): with the checks, a free page whose record is broken (only a bug
  /// can do this) is reported when its block is allocated, quarantined, the rest of the
  /// block goes back, and the allocation takes another block. Without them the block is
  /// handed out as it is.
  @Test(arguments: [false, true])
  func allocationChecksEveryPageWithTheChecks(_ checks: Bool) throws {
    let a = try makeAllocator(checkPages: checks)
    PageAllocator.setThreadCPU(0)
    defer { PageAllocator.setThreadCPU(nil) }
    let p = try #require(a.allocPages(order: 9, gfp: .kernel))
    a.freePages(p, order: 9)  // the head of this CPU's order-9 pcp list
    let broken = a.memMap.presentRecord(p.value + 3)
    broken.pointee.flags.store(PG.locked, ordering: .relaxed)
    let q = try #require(a.allocPages(order: 9, gfp: .kernel))
    if checks {
      #expect(q != p)
      #expect(a.badPageCount == 1)
      let r = try #require(a.badPageReports.first)
      #expect(r.pfn == p + 3 && r.operation == "alloc" && r.reason == "PAGE_FLAGS_CHECK_AT_PREP flag(s) set")
      #expect(a.isQuarantined(p + 3))
    } else {
      #expect(q == p)
      #expect(a.badPageCount == 0)
      broken.pointee.flags.store(0, ordering: .relaxed)
    }
    a.freePages(q, order: 9)
    a.drainAllPages()
    try a.verify()
    #expect(a.freePageCount + a.quarantinedPageCount == a.managedPageCount)
    #expect(a.quarantinedPageCount == (checks ? 1 : 0))
  }

  /// Random hostile API sequences (the fuzzer's ops) in both settings: verify() after
  /// every step, and after everything held is freed every page is free or quarantined
  /// but for the pages of allocations a hostile call reached.
  @Test(arguments: [false, true])
  func hostileSequencesAreContained(_ checks: Bool) throws {
    PageAllocator.setThreadCPU(0)
    defer { PageAllocator.setThreadCPU(nil) }
    var rng = TestRNG(seed: checks ? 12 : 21)
    for _ in 0..<24 {
      let a = try makeFuzzAllocator(checkPages: checks)
      var d = APISequence(a)
      let bytes = (0..<500).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
      var ops: [APISequence.Op] = []
      try bytes.withUnsafeBytes { raw in
        var r = ByteReader(raw)
        while !r.atEnd {
          let op = d.decode(&r, hostile: true)
          ops.append(op)
          d.step(op)
          do { try a.verify() } catch {
            Issue.record("\(error) after \(ops.suffix(6))")
            throw error
          }
        }
      }
      d.releaseAll()
      a.drainAllPages()
      try a.verify()
      var free = Set<PFN>()
      for b in a.freeBlocks() { for i in 0..<(1 << b.order) { free.insert(b.pfn + i) } }
      for z in a.configuration.zones {
        for p in z.pfns where a.isPresent(p) && !free.contains(p) && !a.isQuarantined(p) {
          #expect(d.damagedPages.contains(p), "page \(p) lost after \(ops.suffix(6))")
        }
      }
    }
  }
}

@testable import PageAlloc
import Testing
import PageAllocTestSupport

/// Bad frees: each reported, counted, contained (quarantined where a page is at fault), and
/// the allocator still verifies.
@Suite struct BadFreeTests {
  @Test func doubleFreeOfAnOrder0Page() throws {
    let a = try makeAllocator()
    let free0 = a.freePageCount
    let p = try #require(a.allocPages(order: 0, gfp: .kernel))
    #expect(a.putPage(p))
    #expect(!a.putPage(p))  // double free
    #expect(a.badPageCount == 1)
    #expect(a.badPageReports.first?.kind == .doubleFree)
    #expect(a.badPageReports.first?.reason == "nonzero mapcount")
    #expect(a.refcount(of: p) == 0)
    try a.verify()
    #expect(a.freePageCount == free0)
    // freePages / freeFrozenPages / freeContigRange of the same free page: also caught.
    a.freePages(p, order: 0)
    a.freeFrozenPages(p, order: 0)
    a.freeContigRange(p, count: 1)
    a.freeContigFrozenRange(p, count: 1)
    #expect(a.badPageCount == 5)
    #expect(a.badPageCountsByKind[.doubleFree] == 5)
    try a.verify()
    a.drainAllPages()
    #expect(a.freePageCount == free0)
    #expect(a.quarantinedPageCount == 0)
  }

  @Test func freeingANeverAllocatedPFN() throws {
    let a = try makeAllocator()
    // pfn 12345 sits inside a free max-order block: no flags of its own.
    a.putPage(12345)
    a.freePages(12345, order: 0)
    a.freeFrozenPages(12345, order: 0)
    a.freeContigFrozenRange(12345, count: 8)
    a.freeContigRange(12340, count: 4)
    // One report per call, but for the range: one per page (each an underflow inside a
    // free block). The frozen range stops at the free block it starts in: one report.
    #expect(a.badPageCount == 8)
    #expect(a.badPageReports.allSatisfy { $0.kind == .doubleFree })
    #expect(a.quarantinedPageCount == 0)
    try a.verify()
    #expect(a.freePageCount == a.managedPageCount)
  }

  @Test func pfnOutsideEveryZone() throws {
    let a = try makeAllocator(pages: 4096)
    a.putPage(PFN(1 << 20))
    a.freePages(5000, order: 0)
    a.freeContigRange(4000, count: 200)  // 4000..<4096 free: 96 double frees; 4096..<4200 outside: one report
    a.getPage(-3)
    #expect(a.badPageCountsByKind == [.outsideZones: 4, .doubleFree: 96])
    try a.verify()
    #expect(a.freePageCount == a.managedPageCount)
  }

  @Test func compoundHeadToFreeContigRangeIsRefused() throws {
    let a = try makeAllocator()
    let h = try #require(a.allocPages(order: 4, gfp: [.kernel, .comp]))
    let before = a.freePageCount
    a.freeContigRange(h, count: 16)
    #expect(a.badPageCount == 1)
    #expect(a.badPageReports[0].kind == .compound)
    #expect(a.freePageCount == before)  // nothing freed
    #expect(a.refcount(of: h) == 1)
    try a.verify()
    // The right way still works.
    a.freePages(h, order: 4)
    a.drainAllPages()
    #expect(a.freePageCount == a.managedPageCount)
    try a.verify()
  }

  @Test func wrongOrderIsRefused() throws {
    let a = try makeAllocator()
    let h = try #require(a.allocPages(order: 3, gfp: .kernel))
    a.freePages(h, order: 2)
    a.freePages(h, order: 4)
    #expect(a.badPageCountsByKind[.wrongOrder] == 2)
    #expect(a.refcount(of: h) == 1)
    a.freePages(h, order: 3)
    a.drainAllPages()
    try a.verify()
    #expect(a.freePageCount == a.managedPageCount)
    let c = try #require(a.allocPages(order: 2, gfp: [.kernel, .comp]))
    a.freePages(c, order: 3)
    #expect(a.badPageCountsByKind[.wrongOrder] == 3)
    a.freePages(c + 1, order: 0)  // a tail
    #expect(a.badPageCountsByKind[.compound] == 1)
    a.putPage(c + 2)  // put on a tail goes to the head
    #expect(a.refcount(of: c) == 0)
    a.drainAllPages()
    #expect(a.freePageCount == a.managedPageCount)
    try a.verify()
  }

  @Test func badPageStateIsQuarantined() throws {
    let a = try makeAllocator()
    let h = try #require(a.allocPages(order: 2, gfp: .kernel))
    a.splitPage(h, order: 2)
    a.setPageFlags(h + 1, .locked)
    a.setPageFlags(h + 2, .hwpoison)
    a.freeContigRange(h, count: 4)
    #expect(a.badPageCount == 1)
    #expect(a.badPageReports[0].reason == "PAGE_FLAGS_CHECK_AT_FREE flag(s) set")
    #expect(a.badPageReports[0].pfn == h + 1)
    #expect(a.isQuarantined(h + 1))
    #expect(a.isQuarantined(h + 2))
    #expect(a.hwpoisonedPageCount == 1)
    #expect(a.quarantinedPageCount == 2)
    a.drainAllPages()
    try a.verify()
    #expect(a.freePageCount == a.managedPageCount - 2)
    // A quarantined page is never handed out again: with every free block taken, nothing
    // is left to allocate, and the two pages are not free.
    for b in a.freeBlocks() { #expect(a.claimFreeRange(b.pfn.value, count: 1 << b.order) == .claimed) }
    #expect(a.freePageCount == 0)
    #expect(a.allocPages(order: 0, gfp: [.atomic, .noWarn]) == nil)
    #expect(a.claimFreeRange(h.value + 1, count: 1) == .busy && a.claimFreeRange(h.value + 2, count: 1) == .busy)
  }

  @Test func badTailOfAHighOrderBlockQuarantinesOnlyThatPage() throws {
    let a = try makeAllocator()
    let h = try #require(a.allocPages(order: 3, gfp: .kernel))
    a.setPageFlags(h + 5, .writeback)
    a.freePages(h, order: 3)
    #expect(a.badPageCount == 1)
    #expect(a.quarantinedPageCount == 1)
    a.drainAllPages()
    try a.verify()
    #expect(a.freePageCount == a.managedPageCount - 1)
  }

  @Test func frozenFreeOfAReferencedPage() throws {
    let a = try makeAllocator()
    let p = try #require(a.allocPages(order: 0, gfp: .kernel))
    a.freeFrozenPages(p, order: 0)
    #expect(a.badPageReports.first?.reason == "nonzero _refcount")
    #expect(a.isQuarantined(p))
    try a.verify()
  }

  @Test func putOnAnUnsplitTailUnderflows() throws {
    let a = try makeAllocator()
    let h = try #require(a.allocPages(order: 2, gfp: .kernel))
    a.putPage(h + 1)
    #expect(a.badPageCountsByKind[.refcountUnderflow] == 1)
    #expect(a.refcount(of: h + 1) == 0)
    #expect(a.isQuarantined(h + 1))
    try a.verify()
  }

  @Test func trapOnBadPageTraps() async {
    await #expect(processExitsWith: .failure) {
      let a = try PageAllocator(
        configuration: .init(
          zones: [ZoneConfiguration(kind: .normal, pfns: 0..<4096)], cpuCount: 1, backing: .none,
          trapOnBadPage: true))
      a.putPage(7)
    }
  }
}

/// lib/test_free_pages.c: a speculative reference on the head of a non-compound order-3
/// page: free_pages frees the tail halves at once, the last put frees the head.
@Suite struct TestFreePagesScenario {
  @Test(arguments: [false, true]) func speculativeReference(compound: Bool) throws {
    let a = try makeAllocator()
    let gfp: GFP = compound ? [.kernel, .comp] : .kernel
    for _ in 0..<2000 {
      let p = try #require(a.allocPages(order: 3, gfp: gfp))
      a.getPage(p)
      a.freePages(p, order: 3)
      if !compound {
        // The tails are free already; only the head is held.
        #expect(a.refcount(of: p) == 1)
      }
      #expect(a.putPage(p))
    }
    #expect(a.badPageCount == 0)
    a.drainAllPages()
    try a.verify()
    #expect(a.freePageCount == a.managedPageCount)
  }
}

@testable import PageAlloc
import Testing
import PageAllocTestSupport

@Suite struct ContigRangeTests {
  func pageblockTypes(_ a: PageAllocator) -> [MigrateType?] {
    stride(from: 0, to: a.pfnSpan.upperBound.value, by: PageGeometry.pageblockPages).map { a.migrateType(of: PFN($0)) }
  }

  func snapshot(_ a: PageAllocator) -> [String] {
    a.freeBlocks().map { "\($0.pfn)/\($0.order)" }
  }

  @Test(
    "allocContigRange takes exactly the range; freeContigRange returns everything",
    arguments: [(0, 16384), (16384, 16384), (1000, 3000), (513, 1), (4095, 2), (60000, 5536)])
  func roundTrip(start: Int, count: Int) throws {
    let a = try makeAllocator(cpus: 2)
    let before = snapshot(a)
    let types = pageblockTypes(a)
    let range = PFN(start)..<PFN(start + count)
    try a.allocContigRange(range, gfp: .kernel)
    try a.verify()
    for p in range { #expect(a.refcount(of: p) == 1) }
    #expect(a.freePageCount == a.managedPageCount - count)
    // No page of the range is on a free list, and no pageblock stays isolated.
    for b in a.freeBlocks() {
      #expect(!range.overlaps(b.pfn..<(b.pfn + (1 << b.order))))
    }
    #expect(!pageblockTypes(a).contains(.isolate))
    #expect(a.zoneStatistics()[0].isolatedFreePages == 0)
    a.freeContigRange(range.lowerBound, count: count)
    a.drainAllPages()
    try a.verify()
    #expect(a.badPageCount == 0)
    #expect(snapshot(a) == before)
    #expect(pageblockTypes(a) == types)
  }

  @Test func frozenVariantRoundTrip() throws {
    let a = try makeAllocator(cpus: 2)
    let before = snapshot(a)
    try a.allocContigFrozenRange(PFN(2048)..<PFN(2048 + 4096), gfp: .kernel)
    #expect(a.refcount(of: PFN(2048)) == 0)
    try a.verify()
    a.freeContigFrozenRange(PFN(2048), count: 4096)
    a.drainAllPages()
    try a.verify()
    #expect(snapshot(a) == before)
    #expect(a.badPageCount == 0)
  }

  @Test func compoundRange() throws {
    let a = try makeAllocator(cpus: 2)
    try a.allocContigRange(PFN(1024)..<PFN(2048), gfp: [.kernel, .comp])
    #expect(a.refcount(of: PFN(1024)) == 1)
    #expect(a.refcount(of: PFN(1025)) == 0)
    #expect(
      throws: ContigRangeError.invalidRange(
        PFN(3)..<PFN(7), reason: "__GFP_COMP needs a naturally aligned power of two up to 2^10 pages")
    ) { try a.allocContigRange(PFN(3)..<PFN(7), gfp: [.kernel, .comp]) }
    a.freePages(PFN(1024), order: 10)
    a.drainAllPages()
    try a.verify()
    #expect(a.freePageCount == a.managedPageCount)
  }

  @Test func busyRangeLeavesStateIdentical() throws {
    let a = try makeAllocator(cpus: 2)
    // Fragment the memory a little: allocations of several orders, some freed.
    var held: [(PFN, Int)] = []
    for i in 0..<200 {
      let o = i % 5
      if let p = a.allocPages(order: o, gfp: i % 3 == 0 ? .kernel : .highUserMovable) { held.append((p, o)) }
    }
    for (i, h) in held.enumerated() where i % 3 == 0 { a.freePages(h.0, order: h.1) }
    let inUse = held[1].0
    a.drainAllPages()
    let before = snapshot(a)
    let types = pageblockTypes(a)
    let stats = a.zoneStatistics()[0]
    let range = (inUse - 700)..<(inUse + 900)
    do {
      try a.allocContigRange(range, gfp: .kernel)
    } catch {
      guard case .busy(let p, _) = error else {
        Issue.record("expected busy, got \(error)")
        return
      }
      #expect(range.contains(p))
    }
    try a.verify()
    #expect(snapshot(a) == before)
    #expect(pageblockTypes(a) == types)
    #expect(a.zoneStatistics()[0].nrFreePages == stats.nrFreePages)
    #expect(a.zoneStatistics()[0].isolatedFreePages == 0)
    #expect(a.badPageCount == 0)
  }

  @Test func isolationIsUndoneAndAccounted() throws {
    let a = try makeAllocator(cpus: 2)
    let z = a.zones
    let nrFree = z.pointee.nrFreePages.load(ordering: .relaxed)
    // Isolate by hand: NR_FREE_PAGES drops by the isolated free pages, verify holds.
    z.pointee.lock.lock()
    #expect(a.isolatePageblocksLocked(z, 1536, 4096))
    #expect(!a.isolatePageblocksLocked(z, 3584, 4608))  // overlaps: busy, nothing changed
    z.pointee.lock.unlock()
    try a.verify()
    #expect(a.isIsolated(PFN(1536)) && a.isIsolated(PFN(4095)) && !a.isIsolated(PFN(1535)) && !a.isIsolated(PFN(4096)))
    #expect(a.zoneStatistics()[0].isolatedFreePages == 4096 - 1536)
    #expect(z.pointee.nrFreePages.load(ordering: .relaxed) == nrFree - (4096 - 1536))
    // Allocations never come from isolated blocks.
    for _ in 0..<100 {
      let p = try #require(a.allocPages(order: 3, gfp: .kernel))
      #expect(!(1536..<4096).contains(p.value))
    }
    z.pointee.lock.lock()
    a.undoIsolatePageblocksLocked(z, 1536, 4096)
    z.pointee.lock.unlock()
    try a.verify()
    #expect(a.zoneStatistics()[0].isolatedFreePages == 0)
    #expect(!a.isIsolated(PFN(2048)))
  }

  @Test func invalidRangesThrow() throws {
    let a = try PageAllocator(
      configuration: .init(
        zones: [
          ZoneConfiguration(kind: .dma, pfns: 0..<4096), ZoneConfiguration(kind: .normal, pfns: 4096..<32768),
        ], cpuCount: 2, backing: .none, sectionPages: 4096, holes: [PFN(8192)..<PFN(12288)]))
    // Each cause with its own error: a regression that let one reach isolation (and come
    // back busy) would show.
    func invalid(_ r: Range<PFN>, _ why: String) -> ContigRangeError { .invalidRange(r, reason: why) }
    #expect(throws: invalid(PFN(10)..<PFN(10), "empty range")) {
      try a.allocContigRange(PFN(10)..<PFN(10), gfp: .kernel)
    }
    #expect(throws: invalid(PFN(4000)..<PFN(4200), "not inside one zone")) {
      try a.allocContigRange(PFN(4000)..<PFN(4200), gfp: .kernel)
    }
    #expect(throws: invalid(PFN(8000)..<PFN(8300), "pfn 0x2000 is in a memmap hole")) {
      try a.allocContigRange(PFN(8000)..<PFN(8300), gfp: .kernel)
    }
    #expect(throws: invalid(PFN(40000)..<PFN(40010), "not inside one zone")) {
      try a.allocContigRange(PFN(40000)..<PFN(40010), gfp: .kernel)
    }
    #expect {
      try a.allocContigRange(PFN(5000)..<PFN(5010), gfp: .atomic)
    } throws: { error in
      if case .invalidGFP = error as? ContigRangeError { true } else { false }
    }
    try a.verify()
    #expect(a.freePageCount == a.managedPageCount)
  }

  @Test("allocContigPages returns a naturally aligned range", arguments: [1, 16, 512, 1024, 4096, 16384, 3000])
  func allocContigPagesAligned(count: Int) throws {
    let a = try makeAllocator(cpus: 2)
    // Some pages in use so the first candidates are busy.
    var held: [PFN] = []
    for _ in 0..<50 { held.append(try #require(a.allocPages(order: 0, gfp: .kernel))) }
    let p = try #require(a.allocContigPages(count: count, gfp: .kernel))
    if count & (count - 1) == 0 { #expect(p.value % count == 0) }
    for h in held { #expect(!(p.value..<(p.value + count)).contains(h.value)) }
    try a.verify()
    a.freeContigRange(p, count: count)
    for h in held { a.freePages(h, order: 0) }
    a.drainAllPages()
    try a.verify()
    #expect(a.freePageCount == a.managedPageCount)
    #expect(a.badPageCount == 0)
  }

  @Test func allocContigPagesFailsWhenNothingFits() throws {
    let a = try makeAllocator(pages: 1 << 14, cpus: 2)
    #expect(a.allocContigPages(count: 1 << 15, gfp: [.kernel, .noWarn]) == nil)
    let held = a.allocPages(order: 0, gfp: .kernel)!
    _ = held
    #expect(a.allocContigPages(count: 1 << 14, gfp: [.kernel, .noWarn]) == nil)
    try a.verify()
  }

}

extension ContigRangeTests {
  @Test func allocContigPagesRejectsImpossibleRequests() throws {
    let a = try makeAllocator(pages: 1 << 14, cpus: 2)
    #expect(a.allocContigPages(count: Int.max, gfp: .kernel) == nil)
    #expect(a.allocContigPages(count: 0, gfp: .kernel) == nil)
    #expect(a.allocContigPages(count: 3, gfp: [.kernel, .comp]) == nil)
    #expect(a.allocContigPages(count: 16, gfp: .atomic) == nil)
    let p = try #require(a.allocContigPages(count: 16, gfp: [.kernel, .comp]))
    #expect(p.value % 16 == 0)
    a.freePages(p, order: 4)
    #expect(throws: ContigRangeError.invalidRange(PFN(0)..<PFN(Int.max), reason: "not inside one zone")) {
      try a.allocContigRange(PFN(0)..<PFN(Int.max), gfp: .kernel)
    }
    a.drainAllPages()
    try a.verify()
    #expect(a.freePageCount == a.managedPageCount)
  }
}

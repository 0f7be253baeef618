@testable import PageAlloc
import Testing
import PageAllocTestSupport

@Suite struct AllocatorTests {
  @Test func configurationErrors() {
    #expect(throws: ConfigurationError.noZones) { try PageAllocator(configuration: .init(zones: [])) }
    #expect(throws: ConfigurationError.badSectionSize(512)) {
      try PageAllocator(configuration: .init(zones: [.init(kind: .normal, pfns: 0..<4096)], sectionPages: 512))
    }
    #expect(throws: ConfigurationError.zonesOverlapOrOutOfOrder(.dma32, .normal)) {
      try PageAllocator(
        configuration: .init(zones: [.init(kind: .dma32, pfns: 0..<4096), .init(kind: .normal, pfns: 2048..<8192)]))
    }
    #expect(throws: ConfigurationError.badCPUCount(0)) {
      try PageAllocator(configuration: .init(zones: [.init(kind: .normal, pfns: 0..<4096)], cpuCount: 0))
    }
  }

  @Test func recordIs16Bytes() {
    #expect(MemoryLayout<PageRecord>.stride == 16)
  }

  @Test func watermarksFollowMinFreeKbytes() throws {
    // 1 GiB of Normal: min_free_kbytes = sqrt(1048576 * 16) = 4096 kB = 1024 pages.
    let a = try makeAllocator(pages: 262_144)
    let z = a.zoneStatistics()[0]
    #expect(z.watermarkMin == 1024)
    // delta = max(min/4, managed * 10 / 10000) = max(256, 262) = 262
    #expect(z.watermarkLow == 1024 + 262)
    #expect(z.watermarkHigh == 1024 + 524)
    #expect(z.batch == 63)  // zone_batchsize for >= 1 GiB
    #expect(z.highMin == 1286)  // the low watermark (one CPU), above 4 * batch
    #expect(z.highMax == 262_144 / 8)
  }

  @Test func allocationFailsBelowTheWatermarkWithoutReclaim() throws {
    let a = try makeAllocator(pages: 8192)
    let z = a.zoneStatistics()[0]
    var got = 0
    while a.allocPages(order: 0, gfp: [.kernel, .noWarn]) != nil { got += 1 }
    // GFP_KERNEL stops at the min watermark: it failed once, after draining the pcp
    // lists (it may reclaim), with the zone's free pages down to min exactly.
    #expect(a.pcpPageCount == 0)
    #expect(a.zoneStatistics()[0].nrFreePages == z.watermarkMin)
    #expect(got > 0)
    #expect(a.allocationFailureCount == 1)
    // GFP_ATOMIC may go further, into the reserve.
    var atomic = 0
    while a.allocPages(order: 0, gfp: [.atomic, .noWarn]) != nil { atomic += 1 }
    #expect(atomic > 0)
    #expect(a.allocPages(order: 0, gfp: .kernel) == nil)
    #expect(a.lastAllocationFailure?.contains("page allocation failure: order:0") == true)
    try a.verify()
  }

  /// zone_watermark_ok() to the page: an order-4 request (no pcp) needs the free pages
  /// less the request's 16 to stay at the min watermark or above (`free - 16 + 1 > min`):
  /// it fails with min + 15 free and succeeds with min + 16.
  @Test func theWatermarkCheckIsExactToThePage() throws {
    let a = try makeAllocator(pages: 8192)
    let min = a.zoneStatistics()[0].watermarkMin
    #expect(a.claimFreeRange(0, count: 8192) == .claimed)
    #expect(a.freePageCount == 0)
    for p in 0..<(min + 15) { a.putPage(PFN(p)) }
    a.drainAllPages()
    #expect(a.zoneStatistics()[0].nrFreePages == min + 15)
    #expect(a.allocPages(order: 4, gfp: [.kernel, .noWarn]) == nil)
    a.putPage(PFN(min + 15))
    a.drainAllPages()
    #expect(a.zoneStatistics()[0].nrFreePages == min + 16)
    let p = try #require(a.allocPages(order: 4, gfp: [.kernel, .noWarn]))
    #expect(a.zoneStatistics()[0].nrFreePages == min)
    a.freePages(p, order: 4)
    for q in (min + 16)..<8192 { a.putPage(PFN(q)) }
    a.drainAllPages()
    try a.verify()
    #expect(a.freePageCount == a.managedPageCount)
  }

  @Test func directReclaimRequestsDrainOtherCPUsPcpListsBeforeFailing() throws {
    let a = try makeAllocator(pages: 8192, cpus: 2)
    defer { PageAllocator.setThreadCPU(nil) }
    PageAllocator.setThreadCPU(0)
    var held: [PFN] = []
    while let p = a.allocPages(order: 0, gfp: [.kernel, .noWarn]) { held.append(p) }
    // CPU 0 frees a few pages: they sit on its pcp list, not in the zone's free count.
    for p in held.suffix(40) { a.putPage(p) }
    held.removeLast(40)
    #expect(a.zoneStatistics()[0].pagesets[0].count == 40)
    PageAllocator.setThreadCPU(1)
    // GFP_NOWAIT may not reclaim: it fails, the pages stay on CPU 0's list.
    #expect(a.allocPages(order: 0, gfp: [.nowait, .noWarn]) == nil)
    #expect(a.pcpPageCount == 40)
    // GFP_KERNEL drains every pcp list and retries.
    let p = try #require(a.allocPages(order: 0, gfp: .kernel))
    #expect(a.zoneStatistics()[0].pagesets[0].count == 0)
    held.append(p)
    for h in held { a.putPage(h) }
    a.drainAllPages()
    try a.verify()
    #expect(a.freePageCount == a.managedPageCount)
  }

  @Test func zonelistFallsBackNormalToDMA32ToDMA() throws {
    let a = try PageAllocator(
      configuration: .init(
        zones: [
          .init(kind: .dma, pfns: 0..<4096), .init(kind: .dma32, pfns: 4096..<16384),
          .init(kind: .normal, pfns: 16384..<32768), .init(kind: .movable, pfns: 32768..<40960),
        ], cpuCount: 1, backing: .none, sectionPages: 1024))
    #expect(a.zoneKind(of: try #require(a.allocPages(order: 0, gfp: .kernel))) == .normal)
    #expect(a.zoneKind(of: try #require(a.allocPages(order: 0, gfp: [.kernel, .dma32]))) == .dma32)
    #expect(a.zoneKind(of: try #require(a.allocPages(order: 0, gfp: [.kernel, .dma]))) == .dma)
    #expect(a.zoneKind(of: try #require(a.allocPages(order: 0, gfp: .highUserMovable))) == .movable)
    // Exhaust Normal: GFP_KERNEL continues in DMA32 (never Movable), then DMA.
    var kinds = Set<ZoneKind>()
    while let p = a.allocPages(order: 3, gfp: [.kernel, .noWarn]) { kinds.insert(a.zoneKind(of: p)!) }
    #expect(kinds == [.normal, .dma32, .dma])
    let stats = a.zoneStatistics()
    // The lowmem reserve keeps part of DMA32 and DMA away from Normal requests.
    #expect(stats[1].lowmemReserve[ZoneKind.normal.rawValue] == 16384 / 256)
    #expect(stats[1].nrFreePages + stats[1].pcpPages > stats[1].watermarkMin)
    try a.verify()
  }

  @Test func migratetypesAndClaimingPageblocks() throws {
    let a = try makeAllocator(pages: 1 << 14)
    #expect(a.migrateType(of: 0) == .movable)  // boot: every pageblock Movable
    let u = try #require(a.allocPages(order: 0, gfp: .kernel))
    // An unmovable request claimed a whole Movable block (order >= pageblock order).
    #expect(a.migrateType(of: u) == .unmovable)
    let m = try #require(a.allocPages(order: 0, gfp: .highUserMovable))
    #expect(a.migrateType(of: m) == .movable)
    let r = try #require(a.allocPages(order: 0, gfp: [.kernel, .reclaimable]))
    #expect(a.migrateType(of: r) == .reclaimable)
    #expect(GFP.kernel.migrateType == .unmovable)
    #expect(GFP.highUserMovable.migrateType == .movable)
    #expect(a.zoneStatistics()[0].pageblocksClaimed >= 2)
    try a.verify()
    a.putPage(u)
    a.putPage(m)
    a.putPage(r)
    a.drainAllPages()
    try a.verify()
    #expect(a.freePageCount == a.managedPageCount)
  }

  @Test func frozenAndCompoundRefcounts() throws {
    let a = try makeAllocator()
    let f = try #require(a.allocFrozenPages(order: 3, gfp: .kernel))
    for i in 0..<8 { #expect(a.refcount(of: f + i) == 0) }
    a.freeFrozenPages(f, order: 3)
    let c = try #require(a.allocPages(order: 5, gfp: [.kernel, .comp]))
    #expect(a.refcount(of: c) == 1)
    a.getPage(c + 7)  // a tail reference is the head's
    #expect(a.refcount(of: c) == 2)
    #expect(!a.putPage(c + 3))
    #expect(a.putPage(c))
    let fr = try #require(a.allocFrozenPages(order: 4, gfp: .kernel))
    a.freeContigFrozenRange(fr, count: 16)
    let fc = try #require(a.allocFrozenPages(order: 2, gfp: [.kernel, .comp]))
    a.freeContigFrozenRange(fc, count: 4)  // a compound head: freed whole
    a.drainAllPages()
    #expect(a.badPageCount == 0)
    try a.verify()
    #expect(a.freePageCount == a.managedPageCount)
  }

  @Test func splitPageThenFreeEachPage() throws {
    let a = try makeAllocator()
    let p = try #require(a.allocPages(order: 6, gfp: .kernel))
    a.splitPage(p, order: 6)
    for i in stride(from: 63, through: 0, by: -1) { #expect(a.putPage(p + i)) }
    a.drainAllPages()
    try a.verify()
    #expect(a.freePageCount == a.managedPageCount)
  }

  @Test(arguments: [Backing.memfd, .anonymous]) func backedMemoryZeroAndAddresses(backing: Backing) throws {
    let a = try makeAllocator(pages: 1 << 14, backing: backing)
    let p = try #require(a.allocPages(order: 2, gfp: .kernel))
    let addr = try #require(a.address(of: p))
    #expect(a.address(of: p + 1) == addr + 4096)
    addr.storeBytes(of: 0xdead_beef, as: UInt32.self)
    (addr + 3 * 4096 + 100).storeBytes(of: 7, as: UInt8.self)
    a.freePages(p, order: 2)
    a.drainAllPages()
    // The same pages again, zeroed on request.
    var held: [PFN] = []
    var again: PFN?
    while let q = a.allocPages(order: 2, gfp: [.kernel, .zero, .noWarn]) {
      if q == p { again = q; break }
      held.append(q)
    }
    let q = try #require(again)
    let b = try #require(a.address(of: q))
    #expect(b.load(as: UInt32.self) == 0)
    #expect((b + 3 * 4096 + 100).load(as: UInt8.self) == 0)
    a.freePages(q, order: 2)
    for h in held { a.freePages(h, order: 2) }
    #expect(try makeAllocator(pages: 1024).address(of: 0) == nil)  // backing .none
  }

  @Test func sixteenGiBOfPFNsCostsNothingUntilTouched() throws {
    let a = try PageAllocator(
      configuration: .init(zones: [.init(kind: .normal, pfns: PFN(0)..<PFN(1 << 22))], cpuCount: 2, backing: .memfd))
    #expect(a.managedPageCount == 1 << 22)
    let p = try #require(a.allocPages(order: 10, gfp: .kernel))
    let addr = try #require(a.address(of: p + 1023))
    addr.storeBytes(of: 42, as: Int.self)
    #expect(addr.load(as: Int.self) == 42)
    a.freePages(p, order: 10)
  }

  @Test func pagePoisoningCatchesAWriteAfterFree() throws {
    let a = try makeAllocator(pages: 1 << 12, backing: .anonymous, poison: true)
    let p = try #require(a.allocPages(order: 0, gfp: .kernel))
    let addr = try #require(a.address(of: p))
    a.putPage(p)
    #expect(addr.load(as: UInt8.self) == 0xaa)
    addr.storeBytes(of: 1, as: UInt8.self)  // use after free
    let q = try #require(a.allocPages(order: 0, gfp: .kernel))  // LIFO pcp: the same page
    #expect(q == p)
    #expect(a.badPageReports.first?.kind == .poisonCorrupted)
    a.putPage(q)
  }

  @Test func verifyFindsBrokenInvariants() throws {
    let a = try makeAllocator(pages: 4096)
    try a.verify()
    // A free page with a reference.
    let head = a.freeBlocks()[0].pfn
    a.memMap.presentRecord(head.value).pointee.refcount.store(1, ordering: .relaxed)
    #expect(throws: VerificationError.self) { try a.verify() }
    a.memMap.presentRecord(head.value).pointee.refcount.store(0, ordering: .relaxed)
    try a.verify()
    // A wrong nr_free.
    a.zones[0].lists[listIndex(10, MigrateType.movable.rawValue)].count += 1
    #expect(throws: VerificationError.self) { try a.verify() }
    a.zones[0].lists[listIndex(10, MigrateType.movable.rawValue)].count -= 1
    // Unmerged buddies: split a max-order block into two free halves by hand.
    a.zones[0].lock.lock()
    a.delFromFreeList(a.zones, 0, 10, MigrateType.movable.rawValue)
    a.addToFreeList(a.zones, 0, 9, MigrateType.movable.rawValue, tail: true)
    a.addToFreeList(a.zones, 512, 9, MigrateType.movable.rawValue, tail: true)
    a.zones[0].lock.unlock()
    #expect {
      try a.verify()
    } throws: { ($0 as? VerificationError)?.message.contains("unmerged buddies") == true }
  }

  @Test func pcpBatchRefillAndDrainAtHigh() throws {
    let a = try makeAllocator(pages: 1 << 16, cpus: 1)
    PageAllocator.setThreadCPU(0)
    defer { PageAllocator.setThreadCPU(nil) }
    let z = a.zoneStatistics()[0]
    #expect(z.batch == 15)
    let p = try #require(a.allocPages(order: 0, gfp: .kernel))
    // One refill took a batch; one page left the pcp.
    #expect(a.pcpPageCount == 14)
    a.putPage(p)
    #expect(a.pcpPageCount == 15)
    // Freeing many order-0 pages drains the pcp when it reaches high.
    var held: [PFN] = []
    for _ in 0..<3000 { held.append(try #require(a.allocPages(order: 0, gfp: .kernel))) }
    for h in held { a.putPage(h) }
    let s = a.zoneStatistics()[0].pagesets[0]
    #expect(s.count < s.high)
    #expect(s.high >= z.highMin && s.high <= z.highMax)
    try a.verify()
    a.drainAllPages()
    #expect(a.pcpPageCount == 0)
    #expect(a.freePageCount == a.managedPageCount)
  }

  @Test func allocPagesBulkAndReleaseFreeMemory() throws {
    let a = try makeAllocator(pages: 1 << 12, backing: .memfd)
    var pages: [PFN] = []
    #expect(a.allocPagesBulk(count: 100, gfp: .kernel, into: &pages) == 100)
    let addr = try #require(a.address(of: pages[0]))
    addr.storeBytes(of: 9, as: UInt8.self)
    a.freePagesBulk(pages)
    #expect(a.releaseFreeMemory() == a.managedPageCount)
    #expect(addr.load(as: UInt8.self) == 0)
    try a.verify()
  }

  @Test func gfpPrintsLikeTheKernel() {
    #expect(GFP.kernel.description == "GFP_KERNEL")
    #expect(GFP([.kernel, .zero]).description == "GFP_KERNEL|__GFP_ZERO")
    #expect(GFP.atomic.description == "GFP_ATOMIC")
    #expect(GFP.highUserMovable.description == "GFP_HIGHUSER_MOVABLE")
  }
}

import Testing

@testable import PageAlloc
import PageAllocTestSupport

/// The free half of the per-CPU lists against the kernel's rules (`free_frozen_page_commit()`,
/// `nr_pcp_high()`, `nr_pcp_free()`, `free_pcppages_bulk()`, `drain_pages_zone()`), with
/// golden drain sequences worked out by hand from those rules.
///
/// The zone is 65536 pages on one CPU: batch 15, high_min 640 (the low watermark), high_max
/// 8192. Pages are put on the pcp by claiming them (no refill, no allocation) and freeing
/// them, so every list holds exactly what the test freed.
@Suite(.serialized) struct PcpDrainTests {
  func setUp(pages: Int = 65536) throws -> (PageAllocator, TraceBuffer) {
    let (a, t) = try makeTracedAllocator(pages: pages, cpus: 1)
    PageAllocator.setThreadCPU(0)
    return (a, t)
  }

  /// The pcpu_drain events as "pfn/order", in the order they fired.
  func drained(_ t: TraceBuffer) -> [String] {
    t.snapshot.filter { $0.kind == .pagePcpuDrain }.map { "\($0.pfn!.value)/\($0.order)" }
  }

  /// Claims `range` and frees it back as one aligned chunk (onto the pcp when its order is
  /// a pcp order).
  func freeChunk(_ a: PageAllocator, _ start: Int, _ count: Int) {
    #expect(a.claimFreeRange(start, count: count) == .claimed)
    a.freeContigRange(PFN(start), count: count)
  }

  /// Claims `range` and frees its pages one by one, in order.
  func freePagesOneByOne(_ a: PageAllocator, _ range: Range<Int>) {
    #expect(a.claimFreeRange(range.lowerBound, count: range.count) == .claimed)
    for p in range { a.freePages(PFN(p), order: 0) }
  }

  /// free_pcppages_bulk() visits the list just freed to first, and free_frozen_page_commit()
  /// drains in pieces of at most `batch`, each starting at that list again. An order-9
  /// free that pushes the pcp over `high` returns both THP blocks (the oldest first), then
  /// the order-0 pages, oldest first.
  @Test func anOrder9FreeDrainsTheTHPListFirst() throws {
    let (a, t) = try setUp()
    defer { PageAllocator.setThreadCPU(nil) }
    freePagesOneByOne(a, 0..<40)
    freeChunk(a, 1024, 512)
    #expect(a.pcpPageCount == 552)
    t.removeAll()
    // count 1064 >= high 640; free_count stayed 552 (not below batch << 5 = 480), so
    // nr_pcp_free = clamp(552, 15, 625) = 552: pieces of 15 from list 13 on.
    freeChunk(a, 2048, 512)
    #expect(drained(t) == ["1024/9", "2048/9"] + (0..<40).map { "\($0)/0" })
    #expect(a.pcpPageCount == 0)
    #expect(a.freeBlockCounts()[10] == 64)
    try a.verify()
  }

  /// An order-0 free that triggers a drain of 31 pages takes them from its own list in
  /// pieces of 15, 15 and 1; the cached THP block stays on the pcp.
  @Test func piecesRestartAtTheListJustFreedTo() throws {
    let (a, t) = try setUp()
    defer { PageAllocator.setThreadCPU(nil) }
    freeChunk(a, 1024, 512)
    freePagesOneByOne(a, 0..<127)
    #expect(a.pcpPageCount == 639)
    a.pcp(0).pointee.freeCount = 30
    t.removeAll()
    #expect(a.claimFreeRange(127, count: 1) == .claimed)
    a.freePages(PFN(127), order: 0)
    // free_count 31, high 640: nr_pcp_free = clamp(31, 15, 625) = 31.
    #expect(drained(t) == (0..<31).map { "\($0)/0" })
    #expect(a.pcpBlocks().contains { $0.pfn == PFN(1024) && $0.order == 9 })
    #expect(a.pcpPageCount == 640 - 31)
    try a.verify()
  }

  /// drain_pages_zone() starts at list 0 on every call (no cursor kept between drains).
  @Test func drainAllPagesStartsAtListZero() throws {
    let (a, t) = try setUp()
    defer { PageAllocator.setThreadCPU(nil) }
    // Pageblock 1 (pfns 512...1023) Unmovable, so its pages go to list 0.
    #expect(a.claimFreeRange(512, count: 512) == .claimed)
    a.memMap.setMigrateType(512, .unmovable)
    for round in 0..<2 {
      let base = round * 8
      freePagesOneByOne(a, (2048 + base)..<(2056 + base))  // list 1 (Movable)
      for p in (512 + base)..<(520 + base) { a.freePages(PFN(p), order: 0) }  // list 0
      t.removeAll()
      a.drainAllPages()
      #expect(
        drained(t) == ((512 + base)..<(520 + base)).map { "\($0)/0" }
          + ((2048 + base)..<(2056 + base)).map { "\($0)/0" })
    }
    try a.verify()
  }

  /// free_count grows by the freed pages only while below batch << 5 (480), and the test
  /// comes before the add: an order-9 free at 479 leaves 991.
  @Test func freeCountOvershootsByTheLastFree() throws {
    let (a, _) = try setUp()
    defer { PageAllocator.setThreadCPU(nil) }
    a.pcp(0).pointee.freeCount = 479
    freeChunk(a, 1024, 512)
    #expect(a.pcp(0).pointee.freeCount == 991)
    freePagesOneByOne(a, 0..<1)
    #expect(a.pcp(0).pointee.freeCount == 991)
    try a.verify()
  }

  /// nr_pcp_free() frees one page when high is below batch (a disabled or boot pageset),
  /// taken from the list just freed to.
  @Test func highBelowBatchFreesOnePage() throws {
    let (a, t) = try setUp()
    defer { PageAllocator.setThreadCPU(nil) }
    let pcp = a.pcp(0)
    pcp.pointee.highMin = 10
    pcp.pointee.highMax = 10
    pcp.pointee.high = 10
    freePagesOneByOne(a, 0..<9)
    #expect(drained(t).isEmpty)
    t.removeAll()
    freePagesOneByOne(a, 9..<10)
    #expect(drained(t) == ["0/0"])
    #expect(a.pcpPageCount == 9)
    // The boot pageset: high 0, batch 1. Every free drains one page at once.
    pcp.pointee.highMin = 0
    pcp.pointee.highMax = 0
    pcp.pointee.high = 0
    pcp.pointee.batch = 1
    t.removeAll()
    freePagesOneByOne(a, 10..<11)
    #expect(drained(t) == ["1/0"])
    #expect(a.pcpPageCount == 9)
    try a.verify()
  }

  /// A pcp no allocation or free has touched yet shows high 0, as /proc/zoneinfo shows for
  /// the kernel's; its first use clamps it to high_min.
  @Test func untouchedPcpShowsHighZero() throws {
    let a = try PageAllocator(configuration: .normal(pages: 65536, cpuCount: 2, backing: .none))
    defer { PageAllocator.setThreadCPU(nil) }
    #expect(a.zoneStatistics()[0].pagesets.map(\.high) == [0, 0])
    PageAllocator.setThreadCPU(1)
    #expect(a.claimFreeRange(0, count: 1) == .claimed)
    a.freePages(PFN(0), order: 0)
    #expect(a.zoneStatistics()[0].pagesets.map(\.high) == [0, 320])
  }
}

/// PCPF_FREE_HIGH_BATCH and ZONE_BELOW_HIGH, the two flags the free path reads.
@Suite(.serialized) struct PcpFlagTests {
  /// PCPF_FREE_HIGH_BATCH (on by default, as every x86 cache gives it): a burst of
  /// order-1...3 frees with no allocation in between drains at once only when the pcp holds
  /// at least a batch. With the flag off, at once.
  @Test(arguments: [true, false]) func freeHighBatch(on: Bool) throws {
    var c = PageAllocator.Configuration.normal(pages: 65536, cpuCount: 1, backing: .none)
    c.pcpFreeHighBatch = on
    let a = try PageAllocator(configuration: c)
    let t = TraceBuffer()
    a.setTraceSink(t)
    PageAllocator.setThreadCPU(0)
    defer { PageAllocator.setThreadCPU(nil) }
    // free_count >= batch + high_min / 2 (15 + 320), and the previous free was high-order.
    a.pcp(0).pointee.freeCount = 400
    a.pcp(0).pointee.prevFreeHighOrder = true
    #expect(a.claimFreeRange(0, count: 2) == .claimed)
    a.freeContigRange(PFN(0), count: 2)  // one order-1 chunk: 2 pages on the pcp, fewer than batch 15
    let drains = t.snapshot.filter { $0.kind == .pagePcpuDrain }.map { "\($0.pfn!.value)/\($0.order)" }
    #expect(drains == (on ? [] : ["0/1"]))
    #expect(a.pcpPageCount == (on ? 2 : 0))
    try a.verify()
  }

  /// ZONE_BELOW_HIGH is a zone flag: set when an allocation finds the zone at or below its
  /// high watermark, cleared only by a pcp free that drained with the zone above high (plus
  /// lowmem_reserve[ZONE_MOVABLE]).
  @Test func zoneBelowHighIsSetByAllocationAndClearedOnTheDrainPath() throws {
    let a = try makeAllocator(pages: 65536, cpus: 1)  // high watermark 768, low 640
    PageAllocator.setThreadCPU(0)
    defer { PageAllocator.setThreadCPU(nil) }
    func below() -> Bool { a.zones[0].belowHigh.load(ordering: .relaxed) }
    #expect(!below())
    // All but 700 pages taken: below high, above low. Claims are not allocations.
    #expect(a.claimFreeRange(0, count: 65536 - 700) == .claimed)
    #expect(!below())
    _ = try #require(a.allocPages(order: 0, gfp: .highUserMovable))
    #expect(below())
    // Plenty freed straight to the buddy (order-10 chunks): the flag stays.
    a.freeContigRange(PFN(0), count: 4096)
    #expect(a.zoneStatistics()[0].nrFreePages > 4000)
    #expect(below())
    // The refill left 14 pages on the pcp; below high, nr_pcp_high() drains at high_min
    // (640) pages: 625 more frees do not drain, the 626th does and clears the flag.
    #expect(a.pcpPageCount == 14)
    for p in 4096..<(4096 + 625) { a.freePages(PFN(p), order: 0) }
    #expect(a.pcpPageCount == 639)
    #expect(below())
    a.freePages(PFN(4096 + 625), order: 0)
    #expect(a.pcpPageCount < 640)
    #expect(!below())
    try a.verify()
  }
}

/// `decay_pcp_high()`, which the kernel's vmstat worker runs on every CPU about once a
/// second: PageAlloc runs it when asked.
@Suite(.serialized) struct PcpDecayTests {
  /// `high` decays by an eighth (not below high_min, nor below count - batch << 5) and the
  /// pcp drains down to it in pieces of batch from list 0; once at high_min there is no
  /// more work.
  @Test func decayLowersHighAndDrainsToIt() throws {
    let (a, t) = try makeTracedAllocator(pages: 1 << 18, cpus: 1)  // batch 63, high_min 1286
    PageAllocator.setThreadCPU(0)
    defer { PageAllocator.setThreadCPU(nil) }
    #expect(a.claimFreeRange(0, count: 1390) == .claimed)
    for p in 0..<1285 { a.freePages(PFN(p), order: 0) }
    a.pcp(0).pointee.high = 1400
    for p in 1285..<1390 { a.freePages(PFN(p), order: 0) }
    #expect(a.pcpPageCount == 1390)
    t.removeAll()
    #expect(a.decayPcpHigh())
    // high = max(1390 - 2016, 1400 - 175, 1286) = 1286: 104 pages drained, oldest first.
    #expect(a.pcp(0).pointee.high == 1286)
    #expect(a.pcpPageCount == 1286)
    #expect(t.snapshot.filter { $0.kind == .pagePcpuDrain }.map { $0.pfn!.value } == Array(0..<104))
    #expect(!a.decayPcpHigh())
    #expect(a.pcpPageCount == 1286)
    try a.verify()
  }
}

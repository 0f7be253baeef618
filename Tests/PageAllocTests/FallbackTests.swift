import Testing

@testable import PageAlloc
import PageAllocTestSupport

/// The migratetype fallbacks and the flags the zonelist walk passes to them:
/// ALLOC_NOFRAGMENT on the first pass, ALLOC_HIGHATOMIC and __GFP_MEMALLOC in the slow
/// path, `__zone_watermark_ok()`'s free-block test for order > 0, and
/// mm_page_alloc_extfrag.
@Suite(.serialized) struct FallbackTests {
  /// DMA32 of 32768 pages, Normal of 65536 above it, one CPU.
  func twoZones() throws -> (PageAllocator, TraceBuffer) {
    let a = try PageAllocator(
      configuration: .init(
        zones: [
          ZoneConfiguration(kind: .dma32, pfns: PFN(0)..<PFN(32768)),
          ZoneConfiguration(kind: .normal, pfns: PFN(32768)..<PFN(98304)),
        ], cpuCount: 1, backing: .none))
    let t = TraceBuffer()
    a.setTraceSink(t)
    PageAllocator.setThreadCPU(0)
    return (a, t)
  }

  /// Claims every other page of `range` (the odd ones): what is left free is order-0
  /// blocks, none of which can merge.
  func keepEveryOtherPage(_ a: PageAllocator, _ range: Range<Int>) {
    var p = range.lowerBound + 1
    while p < range.upperBound {
      #expect(a.claimFreeRange(p, count: 1) == .claimed)
      p += 2
    }
  }

  func stats(_ a: PageAllocator, _ kind: ZoneKind) -> ZoneStatistics {
    a.zoneStatistics().first { $0.kind == kind }!
  }

  func extfrag(_ t: TraceBuffer) -> [TraceEvent] { t.snapshot.filter { $0.kind == .pageAllocExtfrag } }

  /// An Unmovable allocation preferring Normal (ALLOC_NOFRAGMENT) claims a whole free
  /// pageblock in DMA32 rather than a sub-pageblock block in Normal.
  @Test func noFragmentClaimsAWholePageblockInDMA32First() throws {
    let (a, t) = try twoZones()
    defer { PageAllocator.setThreadCPU(nil) }
    keepEveryOtherPage(a, 32768..<98304)
    t.removeAll()
    let p = try #require(a.allocPages(order: 0, gfp: .kernel))
    #expect(p.value < 32768)
    #expect(stats(a, .normal).pageblocksByType[MigrateType.unmovable.rawValue] == 0)
    #expect(stats(a, .dma32).pageblocksByType[MigrateType.unmovable.rawValue] == 2)
    let e = extfrag(t)
    #expect(e.count == 1)
    #expect(e.first?.pfn == PFN(0) && e.first?.fallbackOrder == 10)
    try a.verify()
  }

  /// When no zone has a whole pageblock to claim, get_page_from_freelist() scans again
  /// without ALLOC_NOFRAGMENT: then Normal's pageblock is claimed from a single page
  /// (a partial claim: zone_locked from __rmqueue_smallest, then extfrag).
  @Test func noFragmentRetriesWithoutItWhenEveryZoneFailed() throws {
    let (a, t) = try twoZones()
    defer { PageAllocator.setThreadCPU(nil) }
    keepEveryOtherPage(a, 0..<32768)
    keepEveryOtherPage(a, 32768..<98304)
    t.removeAll()
    let p = try #require(a.allocPages(order: 0, gfp: .kernel))
    #expect(p.value >= 32768)
    #expect(stats(a, .normal).pageblocksByType[MigrateType.unmovable.rawValue] == 1)
    #expect(stats(a, .dma32).pageblocksByType[MigrateType.unmovable.rawValue] == 0)
    let ev = t.snapshot
    let i = try #require(ev.firstIndex { $0.kind == .pageAllocExtfrag })
    #expect(i > 0 && ev[i - 1].kind == .pageAllocZoneLocked && ev[i - 1].pfn == ev[i].pfn)
    #expect(
      ev[i].formatted.hasSuffix(
        "alloc_order=0 fallback_order=0 pageblock_order=9 alloc_migratetype=0 fallback_migratetype=1 fragmenting=1 change_ownership=1"
      ))
    try a.verify()
  }

  /// A Movable request whose preferred zone is ZONE_MOVABLE has no ALLOC_NOFRAGMENT: it
  /// steals a single page from an Unmovable pageblock there instead of going to Normal.
  /// A steal traces extfrag (fragmenting=1 change_ownership=0) and no zone_locked.
  @Test func movableZoneRequestsStealWithoutNoFragment() throws {
    let a = try PageAllocator(
      configuration: .init(
        zones: [
          ZoneConfiguration(kind: .normal, pfns: PFN(0)..<PFN(65536)),
          ZoneConfiguration(kind: .movable, pfns: PFN(65536)..<PFN(131072)),
        ], cpuCount: 1, backing: .none))
    let t = TraceBuffer()
    a.setTraceSink(t)
    PageAllocator.setThreadCPU(0)
    defer { PageAllocator.setThreadCPU(nil) }
    // The Movable zone: all taken but the even pages of two Unmovable pageblocks.
    #expect(a.claimFreeRange(65536, count: 65536) == .claimed)
    a.memMap.setMigrateType(65536, .unmovable)
    a.memMap.setMigrateType(65536 + 512, .unmovable)
    for p in stride(from: 65536, to: 65536 + 1024, by: 2) { a.freePages(PFN(p), order: 0) }
    a.drainAllPages()
    t.removeAll()
    let p = try #require(a.allocPages(order: 0, gfp: .highUserMovable))
    #expect(p.value >= 65536)
    let e = extfrag(t)
    #expect(!e.isEmpty)
    #expect(e.allSatisfy { $0.migrateType == 1 && $0.fallbackMigrateType == 0 && !$0.changeOwnership })
    #expect(e.first?.formatted.contains("fragmenting=1 change_ownership=0") == true)
    let stolen = Set(e.map(\.pfn))
    #expect(!t.snapshot.contains { $0.kind == .pageAllocZoneLocked && stolen.contains($0.pfn) })
    try a.verify()
  }

  /// A whole-block claim (a free order-10 block taken for an Unmovable refill) traces
  /// mm_page_alloc_extfrag and no mm_page_alloc_zone_locked for that page; the rest of the
  /// refill comes from the claimed block through __rmqueue_smallest, pfn+1, +2, ...
  @Test func wholeBlockClaimTracesExtfragOnly() throws {
    let (a, t) = try makeTracedAllocator(pages: 65536, cpus: 1)
    PageAllocator.setThreadCPU(0)
    defer { PageAllocator.setThreadCPU(nil) }
    let p = try #require(a.allocPages(order: 0, gfp: .kernel))
    #expect(p == PFN(0))
    let ev = t.snapshot
    #expect(ev.map(\.kind) == [.pageAllocExtfrag] + Array(repeating: .pageAllocZoneLocked, count: 14) + [.pageAlloc])
    #expect(ev.dropFirst().prefix(14).map { $0.pfn!.value } == Array(1...14))
    #expect(
      ev[0].formatted
        == "mm_page_alloc_extfrag: page=\(ev[0].pagePointer) pfn=0x0 alloc_order=0 fallback_order=10 pageblock_order=9 alloc_migratetype=0 fallback_migratetype=1 fragmenting=0 change_ownership=1"
    )
  }

  /// `__zone_watermark_ok()` for order > 0 also needs a free block of at least that order
  /// on a list of a pcp type: a zone of scattered single pages fails the check (so the
  /// request never reaches the pcp, and the zone gets flagged ZONE_BELOW_HIGH).
  @Test func highOrderWatermarkNeedsAFreeBlock() throws {
    let a = try makeAllocator(pages: 65536, cpus: 1)
    PageAllocator.setThreadCPU(0)
    defer { PageAllocator.setThreadCPU(nil) }
    keepEveryOtherPage(a, 0..<65536)
    #expect(a.allocPages(order: 3, gfp: [.highUserMovable, .noWarn]) == nil)
    let below = a.zones[0].belowHigh.load(ordering: .relaxed)
    #expect(below)
    #expect(a.pcp(0).pointee.high == 0)
    #expect(a.allocPages(order: 0, gfp: .highUserMovable) != nil)
    try a.verify()
  }

  /// A high-order GFP_ATOMIC request in the slow path (ALLOC_HIGHATOMIC) does not refill
  /// the pcp: it takes its one block from the buddy.
  @Test func highAtomicDoesNotRefillThePcp() throws {
    let (a, t) = try makeTracedAllocator(pages: 65536, cpus: 1)
    PageAllocator.setThreadCPU(0)
    defer { PageAllocator.setThreadCPU(nil) }
    // 600 free pages: below low (640), above min less GFP_ATOMIC's reserves.
    #expect(a.claimFreeRange(0, count: 65536 - 600) == .claimed)
    t.removeAll()
    _ = try #require(a.allocPages(order: 1, gfp: .atomic))
    #expect(a.pcpPageCount == 0)
    #expect(t.snapshot.filter { $0.kind == .pageAllocZoneLocked || $0.kind == .pageAllocExtfrag }.count == 1)
    try a.verify()
  }

  /// __GFP_MEMALLOC ignores the watermarks once they refused; __GFP_NOMEMALLOC overrides it.
  @Test func memallocIgnoresWatermarks() throws {
    let a = try makeAllocator(pages: 65536, cpus: 1)
    #expect(a.claimFreeRange(0, count: 65536 - 100) == .claimed)
    #expect(a.allocPages(order: 0, gfp: [.kernel, .noWarn]) == nil)
    #expect(a.allocPages(order: 0, gfp: [.kernel, .memalloc, .noMemalloc, .noWarn]) == nil)
    #expect(a.allocPages(order: 0, gfp: [.kernel, .memalloc]) != nil)
    try a.verify()
  }
}

import Testing

@testable import PageAlloc
import PageAllocTestSupport

/// Zone set-up as the kernel does it: `__setup_per_zone_wmarks()` from explicit or computed
/// sysctls, `setup_per_zone_lowmem_reserve()`, empty zones, ZONE_DEVICE, and zones whose
/// present and managed counts differ (holes inside a section, memblock reservations).
@Suite struct ZoneSetupTests {
  func stats(_ a: PageAllocator, _ kind: ZoneKind) -> ZoneStatistics {
    a.nodeZoneStatistics()[kind.rawValue]
  }

  func marks(_ s: ZoneStatistics) -> [Int] { [s.watermarkMin, s.watermarkLow, s.watermarkHigh, s.watermarkPromo] }

  /// A Movable zone's min is clamped to managed/1024 in [32, 128], but the gap between its
  /// watermarks comes from its unclamped share of min_free_kbytes.
  @Test func movableGapComesFromTheUnclampedShare() throws {
    let a = try PageAllocator(
      configuration: .init(
        zones: [
          ZoneConfiguration(kind: .normal, pfns: PFN(0)..<PFN(65536)),
          ZoneConfiguration(kind: .movable, pfns: PFN(65536)..<PFN(131072)),
        ], cpuCount: 1, backing: .none))
    // min_free_kbytes = int_sqrt(65536 pages * 4 kB * 16) = 2048 kB: 512 pages, all of
    // them the Normal zone's share (Movable is not lowmem) and the Movable zone's too.
    #expect(a.minFreeKbytes == 2048)
    #expect(marks(stats(a, .normal)) == [512, 640, 768, 896])
    #expect(marks(stats(a, .movable)) == [64, 192, 320, 448])
    #expect(stats(a, .movable).highMin == 192)
  }

  /// min_free_kbytes, watermark_scale_factor, lowmem_reserve_ratio and
  /// percpu_pagelist_high_fraction as inputs.
  @Test func sysctlsAreInputs() throws {
    var c = PageAllocator.Configuration(
      zones: [
        ZoneConfiguration(kind: .dma32, pfns: PFN(0)..<PFN(32768)),
        ZoneConfiguration(kind: .normal, pfns: PFN(32768)..<PFN(98304)),
      ], cpuCount: 2, backing: .none)
    c.minFreeKbytes = 12288  // 3072 pages
    c.watermarkScaleFactor = 200  // 2%
    c.lowmemReserveRatio = [256, 64, 32, 0, 0]
    let a = try PageAllocator(configuration: c)
    #expect(a.minFreeKbytes == 12288)
    // DMA32 share 3072 * 32768 / 98304 = 1024, gap max(256, 655) = 655.
    #expect(marks(stats(a, .dma32)) == [1024, 1679, 2334, 2989])
    // Normal share 2048, gap max(512, 1310) = 1310.
    #expect(marks(stats(a, .normal)) == [2048, 3358, 4668, 5978])
    #expect(stats(a, .dma32).lowmemReserve == [0, 0, 65536 / 64, 65536 / 64, 65536 / 64])
    #expect(stats(a, .normal).lowmemReserve == [0, 0, 0, 0, 0])
    // high_min from the low watermark over 2 CPUs, high_max from managed / 8.
    #expect(stats(a, .normal).highMin == 3358 / 2 && stats(a, .normal).highMax == 65536 / 8 / 2)
    c.percpuPagelistHighFraction = 16
    let b = try PageAllocator(configuration: c)
    #expect(stats(b, .normal).highMin == 65536 / 16 / 2 && stats(b, .normal).highMax == 65536 / 16 / 2)
  }

  /// Every zone kind is reported for the node; kinds not configured, and configured empty
  /// zones, have the kernel's numbers for an empty zone: Movable 32/32/32/32 (its clamped
  /// minimum), the others 0, protection all 0. An empty zone is in no zonelist.
  @Test func emptyZonesAndDevice() throws {
    let a = try PageAllocator(
      configuration: .init(
        zones: [
          ZoneConfiguration(kind: .dma32, pfns: PFN(0)..<PFN(32768)),
          ZoneConfiguration(kind: .normal, pfns: PFN(32768)..<PFN(98304)),
          .empty(.movable), .empty(.device),
        ], cpuCount: 1, backing: .none))
    let all = a.nodeZoneStatistics()
    #expect(all.map(\.kind) == ZoneKind.allCases)
    #expect(all.map(\.spanned) == [0, 32768, 65536, 0, 0])
    #expect(marks(all[0]) == [0, 0, 0, 0])
    #expect(marks(all[3]) == [32, 32, 32, 32])
    #expect(marks(all[4]) == [0, 0, 0, 0])
    #expect(all[0].lowmemReserve == [0, 0, 0, 0, 0] && all[3].lowmemReserve == [0, 0, 0, 0, 0])
    #expect(all[1].lowmemReserve == [0, 0, 256, 256, 256])
    #expect(a.zoneStatistics().map(\.kind) == [.dma32, .normal, .movable, .device])
    // GFP_HIGHUSER_MOVABLE prefers Normal while ZONE_MOVABLE is empty.
    let p = try #require(a.allocPages(order: 0, gfp: .highUserMovable))
    #expect(a.zoneKind(of: p) == .normal)
    try a.verify()
  }

  /// Pages of a zone that are not present (a hole smaller than a section) or not managed
  /// (reserved by firmware or the kernel image) are PG_reserved: never on a free list,
  /// counted by spanned (and present), and a free of one is a bad page.
  @Test func unavailableAndReservedPages() throws {
    let a = try PageAllocator(
      configuration: .init(
        zones: [
          ZoneConfiguration(
            kind: .dma, pfns: PFN(1)..<PFN(4096), unavailable: [PFN(159)..<PFN(256)],
            reserved: [PFN(3841)..<PFN(3999)])
        ], cpuCount: 1, backing: .none))
    let s = a.zoneStatistics()[0]
    #expect(s.spanned == 4095 && s.present == 3998 && s.managed == 3840)
    #expect(a.freePageCount == 3840)
    #expect(!a.freeBlocks().contains { $0.pfn.value < 256 && $0.pfn.value + (1 << $0.order) > 159 })
    #expect(a.pageFlags(of: PFN(200)).contains(.reserved) && a.pageFlags(of: PFN(3900)).contains(.reserved))
    a.freePages(PFN(3900), order: 0)
    #expect(a.badPageCount == 1)
    try a.verify()
  }

  @Test func configurationErrors() {
    func make(_ c: PageAllocator.Configuration) throws(ConfigurationError) { _ = try PageAllocator(configuration: c) }
    let normal = ZoneConfiguration(kind: .normal, pfns: PFN(0)..<PFN(8192))
    #expect(throws: ConfigurationError.deviceZoneNotEmpty) {
      try make(.init(zones: [normal, ZoneConfiguration(kind: .device, pfns: PFN(8192)..<PFN(9216))]))
    }
    #expect(throws: ConfigurationError.noMemory) { try make(.init(zones: [.empty(.normal)])) }
    #expect(throws: ConfigurationError.badZoneRange(.normal, PFN(8000)..<PFN(9000))) {
      try make(
        .init(zones: [ZoneConfiguration(kind: .normal, pfns: PFN(0)..<PFN(8192), reserved: [PFN(8000)..<PFN(9000)])]))
    }
    #expect(throws: ConfigurationError.badZoneRange(.normal, PFN(100)..<PFN(300))) {
      try make(
        .init(zones: [
          ZoneConfiguration(
            kind: .normal, pfns: PFN(0)..<PFN(8192), unavailable: [PFN(0)..<PFN(200)], reserved: [PFN(100)..<PFN(300)])
        ]))
    }
    var c = PageAllocator.Configuration(zones: [normal])
    c.percpuPagelistHighFraction = 7
    #expect(throws: ConfigurationError.badSysctl("percpu_pagelist_high_fraction", 7)) { try make(c) }
    c = .init(zones: [normal])
    c.minFreeKbytes = -1
    #expect(throws: ConfigurationError.badSysctl("min_free_kbytes", -1)) { try make(c) }
    c = .init(zones: [normal])
    c.watermarkScaleFactor = 3001
    #expect(throws: ConfigurationError.badSysctl("watermark_scale_factor", 3001)) { try make(c) }
    c = .init(zones: [normal])
    c.lowmemReserveRatio = [256, 256, 32, 0]
    #expect(throws: ConfigurationError.badSysctl("lowmem_reserve_ratio", 4)) { try make(c) }
  }
}

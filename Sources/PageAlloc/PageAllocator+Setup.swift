import Synchronization

// Zone set-up at boot: `build_zonelists()`, `free_area_init_core()`, `memmap_init()`'s
// reserved pages, `memblock_free_all()`, `__setup_per_zone_wmarks()`,
// `setup_per_zone_lowmem_reserve()`, and the pagesets' `zone_batchsize()`,
// `zone_highsize()` and `pageset_init()`.

/// Where a configured zone's pages go: which are present, which are managed, and the runs
/// of managed pages `memblock_free_all()` hands to the buddy.
struct ZoneLayout {
  /// Pages with a record in the zone's span, less the unavailable ones.
  var present = 0
  /// Present pages less the reserved ones: the pages given to the buddy.
  var managed = 0
  /// The managed pages, as ascending runs inside present sections.
  var runs: [Range<Int>] = []

  init(_ zc: ZoneConfiguration, _ memMap: MemMap) {
    let start = zc.pfns.lowerBound.value
    let end = zc.pfns.upperBound.value
    let unavailable = zc.unavailable.map { $0.lowerBound.value..<$0.upperBound.value }
    let excluded = (unavailable + zc.reserved.map { $0.lowerBound.value..<$0.upperBound.value })
      .sorted { $0.lowerBound < $1.lowerBound }
    var p = start
    while p < end {
      let segEnd = min(memMap.sectionEnd(p), end)
      if memMap.record(p) != nil {
        present += segEnd - p
        for u in unavailable { present -= max(0, min(u.upperBound, segEnd) - max(u.lowerBound, p)) }
        // The section's part of the span, less the excluded ranges.
        var q = p
        for x in excluded where x.upperBound > q && x.lowerBound < segEnd {
          if x.lowerBound > q { runs.append(q..<x.lowerBound) }
          q = max(q, x.upperBound)
        }
        if q < segEnd { runs.append(q..<segEnd) }
      }
      p = segEnd
    }
    managed = runs.reduce(0) { $0 + $1.count }
  }
}

extension PageAllocator {
  /// The configuration's sysctls against the ranges the kernel accepts.
  static func validateSysctls(_ c: Configuration) throws(ConfigurationError) {
    let f = c.percpuPagelistHighFraction
    // percpu_pagelist_high_fraction: 0, or at least MIN_PERCPU_PAGELIST_HIGH_FRACTION (8).
    guard f == 0 || f >= 8 else { throw .badSysctl("percpu_pagelist_high_fraction", f) }
    if let m = c.minFreeKbytes, m < 0 { throw .badSysctl("min_free_kbytes", m) }
    guard (1...3000).contains(c.watermarkScaleFactor) else {
      throw .badSysctl("watermark_scale_factor", c.watermarkScaleFactor)
    }
    guard c.lowmemReserveRatio.count == ZoneKind.count else {
      throw .badSysctl("lowmem_reserve_ratio", c.lowmemReserveRatio.count)
    }
    if let r = c.lowmemReserveRatio.first(where: { $0 < 0 }) { throw .badSysctl("lowmem_reserve_ratio", r) }
  }

  /// The zones: kinds ascending and unique, the non-empty ones in ascending, disjoint pfn
  /// ranges, the Device zone empty, unavailable and reserved ranges inside their zone and
  /// disjoint.
  static func validateZones(_ zones: [ZoneConfiguration]) throws(ConfigurationError) {
    var seen = Set<ZoneKind>()
    var lastSpanning: ZoneConfiguration?
    for (i, z) in zones.enumerated() {
      guard seen.insert(z.kind).inserted else { throw ConfigurationError.duplicateZone(z.kind) }
      if i > 0 && zones[i - 1].kind > z.kind {
        throw ConfigurationError.zonesOverlapOrOutOfOrder(zones[i - 1].kind, z.kind)
      }
      if z.pfns.isEmpty {
        guard z.unavailable.isEmpty && z.reserved.isEmpty else {
          throw ConfigurationError.badZoneRange(z.kind, (z.unavailable + z.reserved)[0])
        }
        continue
      }
      guard z.kind != .device else { throw ConfigurationError.deviceZoneNotEmpty }
      guard z.pfns.lowerBound.value >= 0 else { throw ConfigurationError.negativePFN(z.pfns.lowerBound) }
      guard z.pfns.upperBound.value < Int(UInt32.max) - 1 else {
        throw ConfigurationError.pfnTooLarge(z.pfns.upperBound)
      }
      if let p = lastSpanning, p.pfns.upperBound > z.pfns.lowerBound {
        throw ConfigurationError.zonesOverlapOrOutOfOrder(p.kind, z.kind)
      }
      lastSpanning = z
      var taken: [Range<PFN>] = []
      for r in z.unavailable + z.reserved {
        guard !r.isEmpty, r.lowerBound >= z.pfns.lowerBound, r.upperBound <= z.pfns.upperBound,
          !taken.contains(where: { $0.overlaps(r) })
        else { throw ConfigurationError.badZoneRange(z.kind, r) }
        taken.append(r)
      }
    }
  }

  /// `build_zonelists()` for the single node: for each zone kind a request may name as its
  /// highest, the populated zones of that kind or lower, highest first (Movable -> Normal
  /// -> DMA32 -> DMA). Empty zones are in no zonelist.
  static func makeZonelists(_ zones: [ZoneConfiguration], populated: [Bool]) -> UnsafeMutablePointer<Int8> {
    assert(ZoneKind.allCases.count == ZoneKind.count)
    let zonelists = UnsafeMutablePointer<Int8>.allocate(capacity: ZoneKind.count * Zonelist.capacity)
    zonelists.initialize(repeating: Zonelist.end, count: ZoneKind.count * Zonelist.capacity)
    for kind in ZoneKind.allCases {
      var i = 0
      for (zi, z) in zones.enumerated().reversed() where z.kind <= kind && populated[zi] {
        zonelists[kind.rawValue * Zonelist.capacity + i] = Int8(zi)
        i += 1
      }
    }
    return zonelists
  }

  /// `free_area_init_core()`: the zones, with empty free lists and no memory yet.
  static func makeZones(_ config: [ZoneConfiguration]) -> UnsafeMutablePointer<Zone> {
    let zones = UnsafeMutablePointer<Zone>.allocate(capacity: config.count)
    for (i, zc) in config.enumerated() {
      let lists = UnsafeMutablePointer<FreeList>.allocate(capacity: FreeArea.listCount)
      let reserve = UnsafeMutablePointer<Int>.allocate(capacity: ZoneKind.count)
      (zones + i).initialize(to: bootZone(i, zc, lists: lists, reserve: reserve))
    }
    return zones
  }

  /// Zone `i` as `free_area_init_core()` leaves it, over the given list and reserve
  /// storage (emptied here): no memory yet, every counter at zero.
  static func bootZone(
    _ i: Int, _ zc: ZoneConfiguration, lists: UnsafeMutablePointer<FreeList>, reserve: UnsafeMutablePointer<Int>
  ) -> Zone {
    lists.initialize(
      repeating: FreeList(head: PageRecord.nilLink, tail: PageRecord.nilLink, count: 0), count: FreeArea.listCount)
    reserve.initialize(repeating: 0, count: ZoneKind.count)
    return Zone(
      lock: SpinLock(word: Atomic(0)), nrFreePages: Atomic(0), belowHigh: Atomic(false),
      index: i, kind: zc.kind, start: zc.pfns.lowerBound.value, end: zc.pfns.upperBound.value, lists: lists,
      lowmemReserve: reserve, spanned: zc.pfns.count, present: 0, managed: 0, wmarkMin: 0, wmarkLow: 0,
      wmarkHigh: 0, wmarkPromo: 0, batch: 1, highMin: 0, highMax: 0, pgfree: 0, pgalloc: 0, pgallocFailed: 0,
      fallbackAllocs: 0, pageblocksClaimed: 0)
  }

  /// Puts the allocator back where `init(configuration:)` left it: every page record
  /// cleared and every pageblock Movable, the zones and pagesets rebuilt, the bad-page
  /// log, the quarantine, the counters, fault injection and compaction's state (movable
  /// owners, cached scanner positions, deferrals) cleared; then the boot set-up again. The
  /// trace sink and chunk observer stay.
  ///
  /// For a caller that runs thousands of short independent workloads, like the
  /// API-sequence fuzzer: a new allocator maps, faults in and unmaps its memmap every
  /// time. Nothing else may use the allocator meanwhile, no page handle may be alive, and
  /// no memory debugging may be on (its page_owner records and page protections are not
  /// reset).
  package func resetToBoot() {
    precondition(liveHandles.load(ordering: .acquiring) == 0, "resetToBoot with page handles alive")
    precondition(!debugging, "resetToBoot with memory debugging on")
    let k = compaction.kcompactd
    precondition(k.withLock { k.thread == nil }, "resetToBoot with the kcompactd thread running")
    memMap.clear()
    let map = memMap
    let layouts = configuration.zones.map { ZoneLayout($0, map) }
    for i in 0..<zoneCount {
      let z = zones + i
      let lists = z.pointee.lists
      let reserve = z.pointee.lowmemReserve
      z.deinitialize(count: 1)
      z.initialize(to: PageAllocator.bootZone(i, configuration.zones[i], lists: lists, reserve: reserve))
    }
    for i in 0..<(cpuCount * zoneCount) {
      pcp(i).pointee.lists.deallocate()
      pcp(i).deinitialize(count: 1)
    }
    reports.withLock { $0 = ReportLog() }
    quarantined.store(0, ordering: .relaxed)
    hwpoisoned.store(0, ordering: .relaxed)
    mlockCleared.store(0, ordering: .relaxed)
    faultState.withLock { $0 = nil }
    faultsEnabled.store(false, ordering: .relaxed)
    markReservedPages(layouts)
    freeAllMemory(layouts)
    setupWatermarks()
    setupPageSets()
    compaction.resetToBoot(zones: zones)
  }

  /// `memmap_init()` / `init_unavailable_range()` and memblock's reservations: every page of
  /// a present section that no zone manages is PG_reserved: pages outside every zone
  /// (memmap holes inside a section), and each zone's unavailable and reserved pages.
  func markReservedPages(_ layouts: [ZoneLayout]) {
    let runs = layouts.flatMap(\.runs).sorted { $0.lowerBound < $1.lowerBound }
    var next = 0
    var pfn = memMap.basePFN
    while pfn < memMap.endPFN {
      let secEnd = memMap.sectionEnd(pfn)
      if memMap.record(pfn) != nil {
        var p = pfn
        while next < runs.count && runs[next].upperBound <= p { next += 1 }
        var k = next
        while p < secEnd {
          let stop = k < runs.count ? min(max(runs[k].lowerBound, p), secEnd) : secEnd
          var r = memMap.presentRecord(p)
          while p < stop {
            r.pointee.flags.store(PG.reserved, ordering: .relaxed)
            r += 1
            p += 1
          }
          if k < runs.count && runs[k].lowerBound < secEnd {
            p = min(runs[k].upperBound, secEnd)
            if runs[k].upperBound <= secEnd { k += 1 }
          }
        }
      }
      pfn = secEnd
    }
  }

  /// `memblock_free_all()`: each zone's managed pages go straight onto the free lists as
  /// the largest aligned blocks (at the list tails, as `__free_pages_core()` puts them),
  /// every pageblock Movable.
  func freeAllMemory(_ layouts: [ZoneLayout]) {
    for i in 0..<zoneCount {
      let z = zones + i
      for run in layouts[i].runs {
        var q = run.lowerBound
        while q < run.upperBound {
          let order = PageAllocator.chunkOrder(q, run.upperBound - q)
          addToFreeList(z, q, order, MigrateType.movable.rawValue, tail: true)
          q += 1 << order
        }
      }
      z.pointee.present = layouts[i].present
      z.pointee.managed = layouts[i].managed
    }
  }

  /// `calculate_min_free_kbytes()` at boot, when every watermark is still 0:
  /// int_sqrt(lowmem kB * 16) clamped to [128, 262144], lowmem being the managed pages of
  /// the zones up to Normal (`nr_free_buffer_pages()`).
  static func bootMinFreeKbytes(_ config: [ZoneConfiguration], _ layouts: [ZoneLayout]) -> Int {
    var lowmemPages = 0
    for (i, z) in config.enumerated() where z.kind <= .normal { lowmemPages += layouts[i].managed }
    let lowmemKB = lowmemPages * (PageGeometry.pageSize / 1024)
    return min(max(integerSquareRoot(lowmemKB * 16), 128), 262_144)
  }

  /// `int_sqrt()`: the floor of the square root, exactly.
  static func integerSquareRoot(_ x: Int) -> Int {
    if x < 2 { return max(x, 0) }
    var r = Int(Double(x).squareRoot())
    while r * r > x { r -= 1 }
    while (r + 1) * (r + 1) <= x { r += 1 }
    return r
  }

  /// The min, low, high and promo watermarks `__setup_per_zone_wmarks()` gives a zone of
  /// `kind` with `managed` pages, when `lowmemPages` pages are managed by the zones that
  /// are neither HighMem nor Movable.
  ///
  /// Every zone's share of min_free_kbytes is proportional to its managed pages. A lowmem
  /// zone's min is that share; a Movable zone's is managed/1024 clamped to [32, 128]
  /// (requests that may dip below min rarely need its pages), but its gaps come from the
  /// unclamped share all the same: the gap is the larger of a quarter of the share and
  /// managed * watermark_scale_factor / 10000. So an empty Movable zone has 32 everywhere,
  /// and an empty lowmem zone 0.
  static func watermarks(
    kind: ZoneKind, managed: Int, lowmemPages: Int, minFreeKbytes: Int, scaleFactor: Int
  ) -> (min: Int, low: Int, high: Int, promo: Int) {
    let pagesMin = minFreeKbytes >> (PageGeometry.pageShift - 10)
    let share = lowmemPages > 0 ? pagesMin * managed / lowmemPages : 0
    let minWm = kind == .movable ? min(max(managed / 1024, 32), 128) : share
    // mult_frac(managed, scale, 10000): the exact floor of managed * scale / 10000.
    let scaled = (managed / 10000) * scaleFactor + (managed % 10000) * scaleFactor / 10000
    let delta = max(share >> 2, scaled)
    return (minWm, minWm + delta, minWm + 2 * delta, minWm + 3 * delta)
  }

  /// `__setup_per_zone_wmarks()` and `setup_per_zone_lowmem_reserve()` for every zone,
  /// from the configuration's (or the boot-time) sysctls.
  func setupWatermarks() {
    let c = configuration
    var managedByKind = [Int](repeating: 0, count: ZoneKind.count)
    for i in 0..<zoneCount { managedByKind[zones[i].kind.rawValue] = zones[i].managed }
    let lowmemPages = lowmemPageCount
    for i in 0..<zoneCount {
      let z = zones + i
      let w = PageAllocator.watermarks(
        kind: z.pointee.kind, managed: z.pointee.managed, lowmemPages: lowmemPages, minFreeKbytes: minFreeKbytes,
        scaleFactor: c.watermarkScaleFactor)
      z.pointee.wmarkMin = w.min
      z.pointee.wmarkLow = w.low
      z.pointee.wmarkHigh = w.high
      z.pointee.wmarkPromo = w.promo
      // lowmem_reserve[j] (j above the zone's kind) = managed pages of the kinds above it
      // up to j, / ratio; none when the ratio is 0 or the zone manages nothing.
      let k = z.pointee.kind.rawValue
      let ratio = c.lowmemReserveRatio[k]
      let clear = ratio == 0 || z.pointee.managed == 0
      var acc = 0
      for j in 0..<ZoneKind.count {
        if j <= k {
          z.pointee.lowmemReserve[j] = 0
          continue
        }
        acc += managedByKind[j]
        z.pointee.lowmemReserve[j] = clear ? 0 : acc / ratio
      }
    }
  }

  /// What min_free_kbytes becomes when the kernel recomputes it for these zones as they
  /// are now (boot, memory hotplug, a change of the THP mode): `calculate_min_free_kbytes()`
  /// (int_sqrt(16 * free buffer kB), clamped to [128, 262144], the free buffer pages being
  /// each zone up to Normal's managed pages above its high watermark), raised, when
  /// transparent huge pages are enabled (`always` or `madvise`), to khugepaged's
  /// `set_recommended_min_free_kbytes()`: 11 pageblocks for each populated zone up to Normal
  /// (2 free THPs, and 3 x 3 pageblocks for the fallbacks between the pcp migratetypes), at
  /// most 5% of the free buffer pages. On an x86-64 machine with DMA, DMA32 and Normal and
  /// THP enabled that is 67584 kB unless lowmem is small.
  public func recommendedMinFreeKbytes(transparentHugePages: Bool) -> Int {
    var freeBufferPages = 0
    var lowZones = 0
    for i in 0..<zoneCount where zones[i].kind <= .normal && zones[i].present > 0 {
      freeBufferPages += max(zones[i].managed - zones[i].wmarkHigh, 0)
      lowZones += 1
    }
    let computed = min(
      max(PageAllocator.integerSquareRoot(freeBufferPages * (PageGeometry.pageSize / 1024) * 16), 128), 262_144)
    guard transparentHugePages else { return computed }
    let pageblocks = PageGeometry.pageblockPages * lowZones
    var recommended = pageblocks * 2 + pageblocks * MigrateType.pcpTypes * MigrateType.pcpTypes
    recommended = min(recommended, freeBufferPages / 20) << (PageGeometry.pageShift - 10)
    return max(computed, recommended)
  }

  /// The pages managed by the zones that are neither HighMem nor Movable, over which
  /// min_free_kbytes is shared out.
  var lowmemPageCount: Int {
    var n = 0
    for i in 0..<zoneCount where zones[i].kind != .movable { n += zones[i].managed }
    return n
  }

  /// `zone_batchsize()`: min(managed >> 12, 256 KiB of pages), 1 if that is at most 1,
  /// else rounddown_pow_of_two(b + b/2) - 1: 63 for any zone of 1 GiB or more.
  static func zoneBatchSize(managed: Int) -> Int {
    let b = min(managed >> 12, (256 * 1024) >> PageGeometry.pageShift)
    if b <= 1 { return 1 }
    return (1 << PageGeometry.floorLog2(b + b / 2)) - 1
  }

  /// `zone_highsize()`: a CPU's share of the low watermark (or of managed / fraction), at
  /// least 4 batches.
  static func zoneHighSize(lowWatermark: Int, managed: Int, batch: Int, cpus: Int, fraction: Int) -> Int {
    let total = fraction == 0 ? lowWatermark : managed / fraction
    return max(total / cpus, batch << 2)
  }

  /// `zone_set_pageset_high_and_batch()` and `pageset_init()` for every zone.
  ///
  /// batch from ``zoneBatchSize(managed:)``; high_min from the low watermark and high_max
  /// from managed / 8 (`MIN_PERCPU_PAGELIST_HIGH_FRACTION`), each shared over the CPUs, or
  /// both from managed / `percpuPagelistHighFraction` when it is set. An empty zone keeps
  /// the boot pageset's values (batch 1, high 0). `high` starts at 0, as the kernel's
  /// zeroed pcp does; the first free or refill clamps it into [high_min, high_max], and from
  /// then on it is tuned between the two (see ``nrPcpHigh(_:_:_:_:)`` and
  /// ``nrPcpAlloc(_:_:_:)``). PCPF_FREE_HIGH_BATCH is set as the configuration says.
  func setupPageSets() {
    let frac = configuration.percpuPagelistHighFraction
    for i in 0..<zoneCount {
      let z = zones + i
      var batch = 1
      var highMin = 0
      var highMax = 0
      if z.pointee.present > 0 {
        batch = PageAllocator.zoneBatchSize(managed: z.pointee.managed)
        let managed = z.pointee.managed
        let low = z.pointee.wmarkLow
        if frac > 0 {
          highMin = PageAllocator.zoneHighSize(
            lowWatermark: low, managed: managed, batch: batch, cpus: cpuCount, fraction: frac)
          highMax = highMin
        } else {
          highMin = PageAllocator.zoneHighSize(
            lowWatermark: low, managed: managed, batch: batch, cpus: cpuCount, fraction: 0)
          highMax = PageAllocator.zoneHighSize(
            lowWatermark: low, managed: managed, batch: batch, cpus: cpuCount, fraction: 8)
        }
      }
      z.pointee.batch = batch
      z.pointee.highMin = highMin
      z.pointee.highMax = highMax
      for cpu in 0..<cpuCount {
        let lists = UnsafeMutablePointer<FreeList>.allocate(capacity: PCPList.count)
        lists.initialize(
          repeating: FreeList(head: PageRecord.nilLink, tail: PageRecord.nilLink, count: 0),
          count: PCPList.count)
        let raw = pcpBase + (cpu * zoneCount + i) * PageAllocator.pcpStride
        raw.bindMemory(to: PerCPUPages.self, capacity: 1).initialize(
          to: PerCPUPages(
            lock: SpinLock(word: Atomic(0)), lists: lists, count: 0, high: 0, highMin: highMin,
            highMax: highMax, batch: batch, freeCount: 0, allocFactor: 0, prevFreeHighOrder: false,
            freeHighBatch: configuration.pcpFreeHighBatch && z.pointee.present > 0, pgalloc: 0, pgfree: 0,
            refills: 0, drains: 0))
      }
    }
  }
}

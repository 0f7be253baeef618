import Synchronization

// Zone set-up at boot: `build_zonelists()`, `free_area_init_core()`, `memmap_init()`'s
// reserved pages, `memblock_free_all()`, `__setup_per_zone_wmarks()`,
// `setup_per_zone_lowmem_reserve()`, and the pagesets' `zone_batchsize()`,
// `zone_highsize()` and `pageset_init()`.

extension PageAllocator {
  /// `build_zonelists()` for the single node: for each zone kind a request may name as its
  /// highest, the configured zones of that kind or lower, highest first (Movable -> Normal
  /// -> DMA32 -> DMA).
  static func makeZonelists(_ zones: [ZoneConfiguration]) -> UnsafeMutablePointer<Int8> {
    assert(ZoneKind.allCases.count == ZoneKind.count)
    let zonelists = UnsafeMutablePointer<Int8>.allocate(capacity: ZoneKind.count * Zonelist.capacity)
    zonelists.initialize(repeating: Zonelist.end, count: ZoneKind.count * Zonelist.capacity)
    for kind in ZoneKind.allCases {
      var i = 0
      for (zi, z) in zones.enumerated().reversed() where z.kind <= kind {
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
      lock: SpinLock(word: Atomic(0)), nrFreePages: Atomic(0), index: i, kind: zc.kind,
      start: zc.pfns.lowerBound.value, end: zc.pfns.upperBound.value, lists: lists,
      lowmemReserve: reserve, spanned: zc.pfns.count, present: 0, managed: 0, wmarkMin: 0,
      wmarkLow: 0, wmarkHigh: 0, wmarkPromo: 0, batch: 1, highMin: 0, highMax: 0, pgfree: 0,
      pgalloc: 0, pgallocFailed: 0, fallbackAllocs: 0, pageblocksClaimed: 0)
  }

  /// Puts the allocator back where `init(configuration:)` left it: every page record
  /// cleared and every pageblock Movable, the zones and pagesets rebuilt, the bad-page
  /// log, the quarantine and fault injection cleared; then the boot set-up again. The
  /// trace sink and chunk observer stay.
  ///
  /// For a caller that runs thousands of short independent workloads, like the
  /// API-sequence fuzzer: a new allocator maps, faults in and unmaps its memmap every
  /// time. Nothing else may use the allocator meanwhile, and no page handle may be alive.
  package func resetToBoot() {
    precondition(liveHandles.load(ordering: .acquiring) == 0, "resetToBoot with page handles alive")
    memMap.clear()
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
    faultState.withLock { $0 = nil }
    faultsEnabled.store(false, ordering: .relaxed)
    markReservedPages()
    freeAllMemory()
    setupWatermarks()
    setupPageSets()
  }

  /// `memmap_init()`'s reserved pages: the pages of present sections outside every zone
  /// (memmap holes inside a section) are PG_reserved.
  func markReservedPages() {
    var pfn = memMap.basePFN
    while pfn < memMap.endPFN {
      if memMap.record(pfn) != nil {
        let secEnd = memMap.sectionEnd(pfn)
        var p = pfn
        while p < secEnd {
          if let zi = zoneIndex(p) {
            p = min(zones[zi].end, secEnd)  // the zone's pages: none reserved
            continue
          }
          memMap.presentRecord(p).pointee.flags.store(PG.reserved, ordering: .relaxed)
          p += 1
        }
      }
      pfn = memMap.sectionEnd(pfn)
    }
  }

  /// Counts each zone's present pages (all of them managed), then `memblock_free_all()`:
  /// the memory goes straight onto the free lists as max-order aligned blocks, every
  /// pageblock Movable.
  func freeAllMemory() {
    for i in 0..<zoneCount {
      let z = zones + i
      var present = 0
      var p = z.pointee.start
      while p < z.pointee.end {
        let segEnd = min(memMap.sectionEnd(p), z.pointee.end)
        if memMap.record(p) != nil {
          present += segEnd - p
          var q = p
          while q < segEnd {
            let order = PageAllocator.chunkOrder(q, segEnd - q)
            addToFreeList(z, q, order, MigrateType.movable.rawValue, tail: true)
            q += 1 << order
          }
        }
        p = segEnd
      }
      z.pointee.present = present
      z.pointee.managed = present
    }
  }

  /// `__setup_per_zone_wmarks()` and `setup_per_zone_lowmem_reserve()`.
  func setupWatermarks() {
    // min_free_kbytes = sqrt(lowmem_kbytes * 16), clamped to [128, 262144].
    var lowmemPages = 0
    for i in 0..<zoneCount where zones[i].kind != .movable { lowmemPages += zones[i].managed }
    let kbPerPage = PageGeometry.pageSize / 1024
    let lowmemKB = lowmemPages * kbPerPage
    var minFreeKB = Int(Double(lowmemKB * 16).squareRoot())
    minFreeKB = min(max(minFreeKB, 128), 262144)
    let pagesMin = minFreeKB / kbPerPage
    for i in 0..<zoneCount {
      let z = zones + i
      let managed = z.pointee.managed
      var minWm: Int
      if z.pointee.kind == .movable {
        // Like highmem: a small fixed reserve, managed/1024 in [SWAP_CLUSTER_MAX, 128].
        minWm = min(max(managed / 1024, 32), 128)
      } else {
        minWm = lowmemPages > 0 ? pagesMin * managed / lowmemPages : 0
      }
      // watermark_scale_factor = 10 (0.1%).
      let delta = max(minWm / 4, managed * 10 / 10000)
      z.pointee.wmarkMin = minWm
      z.pointee.wmarkLow = minWm + delta
      z.pointee.wmarkHigh = minWm + 2 * delta
      z.pointee.wmarkPromo = minWm + 3 * delta
    }
    // lowmem_reserve[j] of zone i (j > i) = managed pages of zones i+1...j / ratio[i].
    for i in 0..<zoneCount {
      let zi = zones + i
      for j in 0..<zoneCount where zones[j].kind > zi.pointee.kind {
        let ratio = zi.pointee.kind.lowmemReserveRatio
        var sum = 0
        for k in (i + 1)...j { sum += zones[k].managed }
        zi.pointee.lowmemReserve[zones[j].kind.rawValue] = ratio > 0 ? sum / ratio : 0
      }
      // Reserve indexed by kind; fill kinds without a zone from the next lower zone kind.
      var last = 0
      for k in 0..<ZoneKind.count {
        if zi.pointee.lowmemReserve[k] != 0 {
          last = zi.pointee.lowmemReserve[k]
        } else if k > zi.pointee.kind.rawValue {
          zi.pointee.lowmemReserve[k] = last
        }
      }
    }
  }

  /// `zone_batchsize()`, `zone_highsize()` and `pageset_init()`.
  ///
  /// batch = rounddown_pow_of_two(b + b/2) - 1 with b = min(managed >> 12, 64): 63 for any
  /// zone of 1 GiB or more. high_min = low watermark / CPUs and high_max = managed / 8 /
  /// CPUs (both at least 4 * batch), or managed / fraction / CPUs for both when
  /// `percpuPagelistHighFraction` is set. `high` starts at high_min and is tuned between
  /// the two (see ``PerCPUPages``).
  func setupPageSets() {
    for i in 0..<zoneCount {
      let z = zones + i
      var b = min(z.pointee.managed >> 12, 64)
      if b < 1 { b = 1 }
      b = b + b / 2
      var batch = 1
      while batch * 2 <= b { batch *= 2 }
      batch = max(batch - 1, 1)
      var highMin: Int
      var highMax: Int
      let frac = configuration.percpuPagelistHighFraction
      if frac > 0 {
        highMin = max(z.pointee.managed / frac / cpuCount, 4 * batch)
        highMax = highMin
      } else {
        highMin = max(z.pointee.wmarkLow / cpuCount, 4 * batch)
        highMax = max(z.pointee.managed / 8 / cpuCount, 4 * batch)
        highMax = max(highMax, highMin)
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
            lock: SpinLock(word: Atomic(0)), lists: lists, count: 0, high: highMin,
            highMin: highMin, highMax: highMax, batch: batch, freeCount: 0, allocFactor: 0,
            prevFreeHighOrder: false, drainCursor: 0, pgalloc: 0, pgfree: 0, refills: 0,
            drains: 0))
      }
    }
  }
}

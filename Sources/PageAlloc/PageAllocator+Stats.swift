// Counters and snapshots: the numbers /proc/zoneinfo, /proc/buddyinfo and
// /proc/pagetypeinfo print (`zoneinfo_show_print()`, `frag_show_print()`,
// `pagetypeinfo_showblockcount_print()`), and the free blocks themselves.

/// A snapshot of one CPU's pageset for one zone: what /proc/zoneinfo prints under
/// "pagesets" (pages).
public struct PageSetStatistics: Sendable, Hashable {
  /// Pages on the pcp lists.
  public var count: Int
  /// The drain threshold now, tuned between ``highMin`` and ``highMax``; 0 for a pcp that
  /// no allocation or free has used yet (the kernel clamps it on first use, and
  /// /proc/zoneinfo shows such a pcp with `high: 0`).
  public var high: Int
  /// Blocks moved per refill or drain step.
  public var batch: Int
  public var highMin: Int
  public var highMax: Int

  public init(count: Int, high: Int, batch: Int, highMin: Int, highMax: Int) {
    self.count = count
    self.high = high
    self.batch = batch
    self.highMin = highMin
    self.highMax = highMax
  }
}

/// A snapshot of one zone's counters.
public struct ZoneStatistics: Sendable, Hashable {
  public var kind: ZoneKind
  public var pfns: Range<PFN>
  public var spanned: Int
  public var present: Int
  public var managed: Int
  /// NR_FREE_PAGES: pages on the zone's free lists outside isolated pageblocks.
  public var nrFreePages: Int
  /// Pages on the isolate free lists.
  public var isolatedFreePages: Int
  /// Pages on this zone's pcp lists, all CPUs.
  public var pcpPages: Int
  public var watermarkMin: Int
  public var watermarkLow: Int
  public var watermarkHigh: Int
  public var watermarkPromo: Int
  /// lowmem_reserve by the highest zone kind of a request (DMA, DMA32, Normal, Movable,
  /// Device): what /proc/zoneinfo prints as `protection`.
  public var lowmemReserve: [Int]
  /// nr_free per order (all migratetypes).
  public var freeBlocks: [Int]
  /// free blocks per migratetype per order: `[mt][order]`.
  public var freeBlocksByType: [[Int]]
  /// Pageblocks of each migratetype (by stored type; isolated ones counted as Isolate).
  public var pageblocksByType: [Int]
  /// PGALLOC and PGFREE (pages), counted once as the kernel does.
  public var pgalloc: Int
  public var pgfree: Int
  public var fallbackAllocs: Int
  public var pageblocksClaimed: Int
  public var batch: Int
  public var highMin: Int
  public var highMax: Int
  /// One pageset per CPU, by CPU.
  public var pagesets: [PageSetStatistics]
}

extension PageAllocator {
  /// nr_free per order 0...MAX_PAGE_ORDER, summed over the zones and migratetypes (`/proc/buddyinfo`'s
  /// numbers added up). pcp pages are not in these counts; drain first to see them.
  public func freeBlockCounts() -> [Int] {
    var out = [Int](repeating: 0, count: PageGeometry.orderCount)
    for i in 0..<zoneCount {
      let z = zones + i
      z.pointee.lock.lock()
      for o in 0...PageGeometry.maxOrder {
        for mt in 0..<MigrateType.count { out[o] += z.pointee.lists[listIndex(o, mt)].count }
      }
      z.pointee.lock.unlock()
    }
    return out
  }

  /// Pages free in the buddy (every list, isolated ones included) and on pcp lists.
  public var freePageCount: Int {
    var total = 0
    for i in 0..<zoneCount {
      let z = zones + i
      z.pointee.lock.lock()
      for o in 0...PageGeometry.maxOrder {
        for mt in 0..<MigrateType.count { total += z.pointee.lists[listIndex(o, mt)].count << o }
      }
      z.pointee.lock.unlock()
    }
    return total + pcpPageCount
  }

  /// Pages on all pcp lists.
  public var pcpPageCount: Int {
    var total = 0
    for i in 0..<(cpuCount * zoneCount) {
      let p = pcp(i)
      p.pointee.lock.lock()
      total += p.pointee.count
      p.pointee.lock.unlock()
    }
    return total
  }

  /// Managed pages of all zones.
  public var managedPageCount: Int {
    var t = 0
    for i in 0..<zoneCount { t += zones[i].managed }
    return t
  }

  /// Pages in use: managed less free less quarantined.
  public var allocatedPageCount: Int { managedPageCount - freePageCount - quarantinedPageCount }

  /// The free blocks (head pfn, order) on the zones' free lists, sorted by pfn: after
  /// ``drainAllPages()``, the allocator's whole free state.
  public func freeBlocks() -> [(pfn: PFN, order: Int)] {
    var out: [(PFN, Int)] = []
    for i in 0..<zoneCount {
      let z = zones + i
      z.pointee.lock.lock()
      for o in 0...PageGeometry.maxOrder {
        for mt in 0..<MigrateType.count {
          var p = z.pointee.lists[listIndex(o, mt)].head
          while p != PageRecord.nilLink {
            out.append((PFN(Int(p)), o))
            p = memMap.presentRecord(Int(p)).pointee.next
          }
        }
      }
      z.pointee.lock.unlock()
    }
    return out.sorted { $0.0 < $1.0 }
  }

  /// The blocks on pcp lists (head pfn, order), sorted by pfn.
  public func pcpBlocks() -> [(pfn: PFN, order: Int)] {
    var out: [(PFN, Int)] = []
    for i in 0..<(cpuCount * zoneCount) {
      let pc = pcp(i)
      pc.pointee.lock.lock()
      for li in 0..<PCPList.count {
        var p = pc.pointee.lists[li].head
        while p != PageRecord.nilLink {
          out.append((PFN(Int(p)), pindexToOrder(li)))
          p = memMap.presentRecord(Int(p)).pointee.next
        }
      }
      pc.pointee.lock.unlock()
    }
    return out.sorted { $0.0 < $1.0 }
  }

  /// The zones' counters.
  public func zoneStatistics() -> [ZoneStatistics] {
    var out: [ZoneStatistics] = []
    for i in 0..<zoneCount {
      let z = zones + i
      var pagesets: [PageSetStatistics] = []
      var pcpPages = 0
      var pcpAlloc = 0
      var pcpFree = 0
      for cpu in 0..<cpuCount {
        let p = pcp(cpu * zoneCount + i)
        p.pointee.lock.lock()
        pagesets.append(
          PageSetStatistics(
            count: p.pointee.count, high: p.pointee.high, batch: p.pointee.batch, highMin: p.pointee.highMin,
            highMax: p.pointee.highMax))
        pcpPages += p.pointee.count
        pcpAlloc += p.pointee.pgalloc
        pcpFree += p.pointee.pgfree
        p.pointee.lock.unlock()
      }
      z.pointee.lock.lock()
      var byType = [[Int]](repeating: [Int](repeating: 0, count: PageGeometry.orderCount), count: MigrateType.count)
      var blocks = [Int](repeating: 0, count: PageGeometry.orderCount)
      var isolated = 0
      for o in 0...PageGeometry.maxOrder {
        for mt in 0..<MigrateType.count {
          let c = z.pointee.lists[listIndex(o, mt)].count
          byType[mt][o] = c
          blocks[o] += c
          if mt == MigrateType.isolate.rawValue { isolated += c << o }
        }
      }
      let pbTypes = pageblockCounts(z)
      let s = ZoneStatistics(
        kind: z.pointee.kind, pfns: PFN(z.pointee.start)..<PFN(z.pointee.end), spanned: z.pointee.spanned,
        present: z.pointee.present, managed: z.pointee.managed,
        nrFreePages: z.pointee.nrFreePages.load(ordering: .relaxed), isolatedFreePages: isolated,
        pcpPages: pcpPages, watermarkMin: z.pointee.wmarkMin, watermarkLow: z.pointee.wmarkLow,
        watermarkHigh: z.pointee.wmarkHigh, watermarkPromo: z.pointee.wmarkPromo,
        lowmemReserve: (0..<ZoneKind.count).map { z.pointee.lowmemReserve[$0] }, freeBlocks: blocks,
        freeBlocksByType: byType, pageblocksByType: pbTypes, pgalloc: z.pointee.pgalloc + pcpAlloc,
        pgfree: z.pointee.pgfree + pcpFree, fallbackAllocs: z.pointee.fallbackAllocs,
        pageblocksClaimed: z.pointee.pageblocksClaimed, batch: z.pointee.batch, highMin: z.pointee.highMin,
        highMax: z.pointee.highMax, pagesets: pagesets)
      z.pointee.lock.unlock()
      out.append(s)
    }
    return out
  }

  /// The counters of every zone of the node, one per ``ZoneKind`` in kind order, as
  /// /proc/zoneinfo walks them: the configured zones' ``zoneStatistics()``, and for the
  /// kinds left out an empty zone with the kernel's numbers for one (watermarks from the
  /// same formula with no managed pages: 32 for Movable, 0 for the others; no protection;
  /// the boot pageset's batch 1 and high 0).
  public func nodeZoneStatistics() -> [ZoneStatistics] {
    let configured = zoneStatistics()
    let lowmem = lowmemPageCount
    return ZoneKind.allCases.map { kind in
      if let s = configured.first(where: { $0.kind == kind }) { return s }
      let w = PageAllocator.watermarks(
        kind: kind, managed: 0, lowmemPages: lowmem, minFreeKbytes: minFreeKbytes,
        scaleFactor: configuration.watermarkScaleFactor)
      return ZoneStatistics(
        kind: kind, pfns: PFN(0)..<PFN(0), spanned: 0, present: 0, managed: 0, nrFreePages: 0, isolatedFreePages: 0,
        pcpPages: 0, watermarkMin: w.min, watermarkLow: w.low, watermarkHigh: w.high, watermarkPromo: w.promo,
        lowmemReserve: [Int](repeating: 0, count: ZoneKind.count),
        freeBlocks: [Int](repeating: 0, count: PageGeometry.orderCount),
        freeBlocksByType: [[Int]](
          repeating: [Int](repeating: 0, count: PageGeometry.orderCount), count: MigrateType.count),
        pageblocksByType: [Int](repeating: 0, count: MigrateType.count), pgalloc: 0, pgfree: 0, fallbackAllocs: 0,
        pageblocksClaimed: 0, batch: 1, highMin: 0, highMax: 0, pagesets: [])
    }
  }

  /// Pageblocks of each migratetype, as `pagetypeinfo_showblockcount_print()` counts them:
  /// stepping by a pageblock from the zone's first pfn, present pageblocks only, an
  /// isolated pageblock counted as Isolate.
  func pageblockCounts(_ z: UnsafeMutablePointer<Zone>) -> [Int] {
    var count = [Int](repeating: 0, count: MigrateType.count)
    var pfn = z.pointee.start
    while pfn < z.pointee.end {
      if memMap.record(pfn) != nil { count[memMap.freeListType(pfn).rawValue] += 1 }
      pfn += PageGeometry.pageblockPages
    }
    return count
  }
}

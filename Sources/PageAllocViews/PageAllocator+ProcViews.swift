// The kernel's /proc windows onto the page allocator, character for character
// (mm/vmstat.c: frag_show_print, pagetypeinfo_show*, zoneinfo_show_print, vmstat_show).
//
// Only what PageAlloc really keeps is printed: /proc/vmstat lists the counters we count
// (free pages, PGALLOC per zone, PGFREE), not the hundred the kernel has; /proc/zoneinfo
// prints every zone kind's header, watermarks, geometry and protection, and for populated
// zones the free-page zone stats and the pagesets, without the per-node and NUMA stats. See the article in
// PageAllocViews.docc/ProcViewsAndFragmentationMap.md.

import PageAlloc
import _PageAllocUtilities

extension PageAllocator {
  /// `/proc/buddyinfo`: for each populated zone, `Node 0, zone %8s ` and the number of
  /// free blocks of each order 0...10 as `%6lu ` (every migratetype, isolated ones
  /// included; pcp pages are not counted, as in the kernel).
  ///
  /// ```
  /// Node 0, zone   Normal      1      0      1      1      1      1      1      1      1      1     63
  /// ```
  public func buddyInfo() -> String {
    zoneStatistics().filter { $0.present > 0 }
      .map { buddyInfoLine(zone: $0.kind.description, counts: $0.freeBlocks) }.joined()
  }

  /// `/proc/pagetypeinfo`: the pageblock geometry, the free blocks per migratetype and
  /// order (a count of 100000 or more prints as `>100000`, the kernel's cap), and the
  /// number of pageblocks of each type per zone. (The "Number of mixed blocks" section
  /// needs PAGE_OWNER and is not printed, as on a kernel without it.)
  public func pageTypeInfo() -> String {
    let stats = zoneStatistics().filter { $0.present > 0 }
    var out = "Page block order: \(PageGeometry.pageblockOrder)\n"
    out += "Pages per block:  \(PageGeometry.pageblockPages)\n\n"
    out += padRight("Free pages count per migrate type at order", 43) + " "
    for o in 0...PageGeometry.maxOrder { out += pad(String(o), 6) + " " }
    out += "\n"
    for s in stats {
      for mt in MigrateType.allCases {
        out +=
          "Node " + pad("0", 4) + ", zone " + pad(s.kind.description, 8) + ", type "
          + pad(mt.description, 12) + " "
        for o in 0...PageGeometry.maxOrder {
          let c = s.freeBlocksByType[mt.rawValue][o]
          out += c >= 100_000 ? ">" + pad("100000", 6) + " " : pad(String(c), 6) + " "
        }
        out += "\n"
      }
    }
    out += "\n" + padRight("Number of blocks type ", 23)
    for mt in MigrateType.allCases { out += pad(mt.description, 12) + " " }
    out += "\n"
    for s in stats {
      out += "Node 0, zone " + pad(s.kind.description, 8) + " "
      for c in s.pageblocksByType { out += pad(String(c), 12) + " " }
      out += "\n"
    }
    return out
  }

  /// `/proc/zoneinfo`, the parts PageAlloc models, for every zone of the node
  /// (`nodeZoneStatistics()`: kinds not configured are printed as
  /// the kernel prints an empty zone).
  ///
  /// Per zone: the header, `pages free`, `boost` (always 0: no watermark boosting), the
  /// min/low/high/promo watermarks, spanned/present/managed, `cma` (pages in CMA
  /// pageblocks), `protection` (lowmem_reserve for DMA, DMA32, Normal, Movable, Device). An
  /// unpopulated zone stops there, as in the kernel. A populated one goes on with the zone
  /// stats we keep (nr_free_pages, nr_free_pages_blocks, nr_free_cma), the pagesets (count,
  /// high, batch, high_min, high_max, and the `vm stats threshold` the kernel computes for
  /// the zone, ``statThreshold(managed:cpus:)``), then node_unreclaimable (0: no reclaim),
  /// start_pfn, reserved_highatomic and free_highatomic (the 2026 tree's last two lines;
  /// 6.18 stops after start_pfn). The per-node and NUMA stats are left out.
  public func zoneInfo() -> String {
    var out = ""
    for s in nodeZoneStatistics() {
      let pb = s.pageblocksByType
      out += "Node 0, zone " + pad(s.kind.description, 8)
      out += "\n  pages free     \(s.nrFreePages)"
      out += "\n        boost    0"
      out += "\n        min      \(s.watermarkMin)"
      out += "\n        low      \(s.watermarkLow)"
      out += "\n        high     \(s.watermarkHigh)"
      out += "\n        promo    \(s.watermarkPromo)"
      out += "\n        spanned  \(s.spanned)"
      out += "\n        present  \(s.present)"
      out += "\n        managed  \(s.managed)"
      out += "\n        cma      \(pb[MigrateType.cma.rawValue] * PageGeometry.pageblockPages)"
      out += "\n        protection: (" + s.lowmemReserve.map(String.init).joined(separator: ", ") + ")"
      if s.present == 0 {
        out += "\n"
        continue
      }
      for (name, value) in _zoneStatItems(s) {
        out += "\n      " + padRight(name, 12) + " \(value)"
      }
      out += "\n  pagesets"
      let threshold = PageAllocator.statThreshold(managed: s.managed, cpus: s.pagesets.count)
      for (cpu, p) in s.pagesets.enumerated() {
        out += "\n    cpu: \(cpu)"
        out += "\n              count:    \(p.count)"
        out += "\n              high:     \(p.high)"
        out += "\n              batch:    \(p.batch)"
        out += "\n              high_min: \(p.highMin)"
        out += "\n              high_max: \(p.highMax)"
        out += "\n  vm stats threshold: \(threshold)"
      }
      let freeHighAtomic = (0...PageGeometry.maxOrder).reduce(0) {
        $0 + (s.freeBlocksByType[MigrateType.highAtomic.rawValue][$1] << $1)
      }
      out += "\n  node_unreclaimable:  0"
      out += "\n  start_pfn:           \(s.pfns.lowerBound.value)"
      out += "\n  reserved_highatomic: \(pb[MigrateType.highAtomic.rawValue] * PageGeometry.pageblockPages)"
      out += "\n  free_highatomic:     \(freeHighAtomic)"
      out += "\n"
    }
    return out
  }

  /// `calculate_normal_threshold()`: how far a CPU's count of a zone stat may drift before
  /// it is folded into the zone's, what /proc/zoneinfo prints as `vm stats threshold`:
  /// 2 * fls(CPUs) * (1 + fls(managed in 128 MiB units)), at most 125. (PageAlloc's own
  /// counters are exact; the number is printed as the kernel would print it.)
  public static func statThreshold(managed: Int, cpus: Int) -> Int {
    func fls(_ x: Int) -> Int { x <= 0 ? 0 : Int.bitWidth - x.leadingZeroBitCount }
    let mem = managed >> (27 - PageGeometry.pageShift)
    return min(125, 2 * fls(cpus) * (1 + fls(mem)))
  }

  /// `/proc/vmstat`, the counters PageAlloc keeps, in the kernel's order and format
  /// (`name value` per line): the zone stats nr_free_pages, nr_free_pages_blocks and
  /// nr_free_cma summed over zones, the events pgalloc_dma, pgalloc_dma32, pgalloc_normal,
  /// pgalloc_movable, pgalloc_device (pages, counted once per allocation on the pcp and
  /// buddy paths), pgfree (pages, counted once when freed to a pcp list or the buddy, not
  /// again when a pcp drains) and unevictable_pgs_cleared (pages freed while mlocked), and
  /// the legacy `nr_unstable 0` the kernel always prints last.
  public func vmstat() -> String {
    let stats = zoneStatistics()
    var free = 0
    var blocks = 0
    var cma = 0
    var pgalloc = [Int](repeating: 0, count: ZoneKind.allCases.count)
    var pgfree = 0
    for s in stats {
      let items = _zoneStatItems(s)
      free += items[0].1
      blocks += items[1].1
      cma += items[2].1
      pgalloc[s.kind.rawValue] += s.pgalloc
      pgfree += s.pgfree
    }
    var out = "nr_free_pages \(free)\n"
    out += "nr_free_pages_blocks \(blocks)\n"
    out += "nr_free_cma \(cma)\n"
    for k in ZoneKind.allCases { out += "pgalloc_\(k.description.lowercased()) \(pgalloc[k.rawValue])\n" }
    out += "pgfree \(pgfree)\n"
    out += "unevictable_pgs_cleared \(mlockedPagesCleared)\n"
    out += "nr_unstable 0\n"
    return out
  }

  // MARK: - Helpers

  /// The zone stat items we keep, in `enum zone_stat_item` order: NR_FREE_PAGES,
  /// NR_FREE_PAGES_BLOCKS (free pages in blocks of at least pageblock order, outside
  /// isolated pageblocks) and NR_FREE_CMA_PAGES.
  func _zoneStatItems(_ s: ZoneStatistics) -> [(String, Int)] {
    var blocks = 0
    var cma = 0
    for o in 0...PageGeometry.maxOrder {
      for mt in MigrateType.allCases where mt != .isolate {
        let pages = s.freeBlocksByType[mt.rawValue][o] << o
        if o >= PageGeometry.pageblockOrder { blocks += pages }
        if mt == .cma { cma += pages }
      }
    }
    return [("nr_free_pages", s.nrFreePages), ("nr_free_pages_blocks", blocks), ("nr_free_cma", cma)]
  }
}

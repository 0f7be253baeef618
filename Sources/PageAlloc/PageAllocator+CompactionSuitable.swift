import CPageAllocShim
import Glibc
import Synchronization

// Whether compaction is worth running (mm/compaction.c, mm/vmstat.c): the fragmentation
// and unusable-free indexes, the proactive score, and `compaction_suitable()` with the
// compact gap.

extension PageAllocator {
  // MARK: - Fragmentation indexes

  /// `__fragmentation_index()` (the number debugfs `extfrag/extfrag_index` prints) from
  /// nr_free per order 0...MAX_PAGE_ORDER, scaled by 1000: near 0 a failure of `order` would
  /// come from lack of memory, near 1000 from fragmentation; -1000 when a block of the order
  /// is free (the index does not apply); 0 with nothing free.
  public static func extfragIndex(freeBlocks: [Int], order: Int) -> Int {
    let (total, pages, suitable) = fragInfo(freeBlocks, order)
    if total == 0 { return 0 }
    if suitable > 0 { return -1000 }
    let requested = 1 << order
    return 1000 - (1000 + pages * 1000 / requested) / total
  }

  /// `unusable_free_index()`, scaled by 1000: the share of free memory in blocks smaller
  /// than `order` (1000 with nothing free).
  public static func unusableFreeIndex(freeBlocks: [Int], order: Int) -> Int {
    let (_, pages, suitable) = fragInfo(freeBlocks, order)
    if pages == 0 { return 1000 }
    return (pages - (suitable << order)) * 1000 / pages
  }

  /// `extfrag_for_order()`: the same share in percent (0 with nothing free), the unweighted
  /// score proactive compaction uses at the pageblock order.
  public static func extfragPercent(freeBlocks: [Int], order: Int) -> Int {
    let (_, pages, suitable) = fragInfo(freeBlocks, order)
    if pages == 0 { return 0 }
    return (pages - (suitable << order)) * 100 / pages
  }

  /// `fill_contig_page_info()`: free blocks, free pages, and blocks of `order` the larger
  /// free blocks could make.
  static func fragInfo(_ n: [Int], _ order: Int) -> (total: Int, pages: Int, suitable: Int) {
    var total = 0
    var pages = 0
    var suitable = 0
    for o in 0..<min(n.count, PageGeometry.orderCount) {
      total += n[o]
      pages += n[o] << o
      if o >= order { suitable += n[o] << (o - order) }
    }
    return (total, pages, suitable)
  }

  /// nr_free per order of zone `zi` (every migratetype, isolated ones included), read
  /// under the zone lock.
  func zoneFreeCounts(_ zi: Int) -> [Int] {
    let z = zones + zi
    var out = [Int](repeating: 0, count: PageGeometry.orderCount)
    z.pointee.lock.lock()
    for o in 0...PageGeometry.maxOrder {
      for mt in 0..<MigrateType.count { out[o] += z.pointee.lists[listIndex(o, mt)].count }
    }
    z.pointee.lock.unlock()
    return out
  }

  /// The fragmentation index of `order` in the zone of `kind` (see
  /// ``extfragIndex(freeBlocks:order:)``), or nil without such a zone.
  public func extfragIndex(order: Int, zone kind: ZoneKind) -> Int? {
    guard let zi = (0..<zoneCount).first(where: { zones[$0].kind == kind }) else { return nil }
    return PageAllocator.extfragIndex(freeBlocks: zoneFreeCounts(zi), order: order)
  }

  /// `fragmentation_score_zone()`: the zone's unweighted score, 0...100.
  func fragmentationScoreZone(_ zi: Int) -> Int {
    PageAllocator.extfragPercent(freeBlocks: zoneFreeCounts(zi), order: PageGeometry.pageblockOrder)
  }

  /// The node's fragmentation score (`fragmentation_score_node()`): each zone's
  /// ``extfragPercent(freeBlocks:order:)`` at the pageblock order, weighted by its present
  /// pages, 0...100. Proactive compaction runs above the high mark and stops at the low mark.
  public var extfragScore: Int {
    var node = 0
    for zi in 0..<zoneCount { node += zones[zi].present }
    var score = 0
    for zi in 0..<zoneCount where zones[zi].present > 0 {
      score += zones[zi].present * fragmentationScoreZone(zi) / (node + 1)
    }
    return score
  }

  /// The proactive marks: `fragmentation_score_wmark(low)`.
  func proactiveWatermarks() -> (low: Int, high: Int) {
    let low = 100 - compaction.proactiveness.load(ordering: .relaxed)
    let leeway = min(10, low / 2)
    return (low, min(low + leeway, 100))
  }

  // MARK: - Suitability

  /// `compact_gap()`: free order-0 pages compaction wants above the watermark for targets.
  static func compactGap(_ order: Int) -> Int {
    compactGapCapped ? min(2 << order, compactClusterMax) : 2 << order
  }

  func watermarkValue(_ z: UnsafeMutablePointer<Zone>, _ kind: WatermarkKind) -> Int {
    switch kind {
    case .min: z.pointee.wmarkMin
    case .low: z.pointee.wmarkLow
    case .high: z.pointee.wmarkHigh
    }
  }

  /// `__zone_watermark_ok()` with the per-order check the allocation path leaves to the
  /// free lists: free pages above `mark` plus the lowmem reserve, and (order > 0) a free
  /// block of the order on a list the request may use. CMA pages count only with `cma`.
  /// Takes the zone lock to read the lists.
  func zoneWatermarkOK(
    _ zi: Int, _ order: Int, _ mark: Int, _ highest: Int, cma: Bool, freePages: Int
  ) -> Bool {
    let z = zones + zi
    z.pointee.lock.lock()
    defer { z.pointee.lock.unlock() }
    var free = freePages - (1 << order) + 1
    if !cma {
      for o in 0...PageGeometry.maxOrder { free -= z.pointee.lists[listIndex(o, MigrateType.cma.rawValue)].count << o }
    }
    if free <= mark + z.pointee.lowmemReserve[highest] { return false }
    if order == 0 { return true }
    for o in order...PageGeometry.maxOrder {
      for mt in 0..<MigrateType.pcpTypes where z.pointee.lists[listIndex(o, mt)].count > 0 { return true }
      if cma && z.pointee.lists[listIndex(o, MigrateType.cma.rawValue)].count > 0 { return true }
    }
    return false
  }

  /// `__compaction_suitable()`: enough free order-0 pages above the watermark plus the
  /// compact gap (plus the low-min distance for a costly order) for migration targets.
  func compactionSuitableInner(_ zi: Int, _ order: Int, _ mark: Int, _ highest: Int, freePages: Int) -> Bool {
    let z = zones + zi
    var wm = mark + PageAllocator.compactGap(order)
    if order > PageGeometry.costlyOrder { wm += z.pointee.wmarkLow - z.pointee.wmarkMin }
    return zoneWatermarkOK(zi, 0, wm, highest, cma: true, freePages: freePages)
  }

  /// `compaction_suitable()`: the watermark test, then (costly orders) the fragmentation
  /// index against `vm.extfrag_threshold`.
  func compactionSuitable(_ zi: Int, _ order: Int, _ mark: Int, _ highest: Int) -> Bool {
    let free = zones[zi].nrFreePages.load(ordering: .relaxed)
    var suitable = compactionSuitableInner(zi, order, mark, highest, freePages: free)
    var result = CompactionResult.continue
    if suitable {
      if order > PageGeometry.costlyOrder {
        let fi = PageAllocator.extfragIndex(freeBlocks: zoneFreeCounts(zi), order: order)
        if fi >= 0 && fi <= compaction.extfragThreshold.load(ordering: .relaxed) {
          suitable = false
          result = .notSuitableZone
        }
      }
    } else {
      result = .skipped
    }
    traceCompaction(.compactionSuitable, [zones[zi].kind.rawValue, order, result.rawValue])
    return suitable
  }

  /// `compaction_suit_allocation_order()`: SUCCESS when the allocation can succeed
  /// already, SKIPPED when compaction cannot help, CONTINUE otherwise.
  func compactionSuitAllocationOrder(
    _ zi: Int, _ order: Int, _ highest: Int, _ wmark: WatermarkKind, cma: Bool, async: Bool
  ) -> CompactionResult {
    let z = zones + zi
    let free = z.pointee.nrFreePages.load(ordering: .relaxed)
    let mark = watermarkValue(z, wmark)
    if zoneWatermarkOK(zi, order, mark, highest, cma: cma, freePages: free) { return .success }
    if order > PageGeometry.costlyOrder && async && !cma {
      // An unmovable request must not compact into CMA: count its free pages out.
      if !zoneWatermarkOK(zi, 0, mark + PageAllocator.compactGap(order), highest, cma: false, freePages: free) {
        return .skipped
      }
    }
    if !compactionSuitable(zi, order, mark, highest) { return .skipped }
    return .continue
  }
}

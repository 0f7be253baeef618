import CPageAllocShim
import Glibc
import Synchronization

// Memory compaction (mm/compaction.c): `compact_zone()` with its two scanners,
// `isolate_migratepages_block()` and `isolate_freepages_block()`, `__compact_finished()`,
// `compaction_suitable()` with the compact gap and `fragmentation_index()`, the skip bits and
// cached scanner positions, deferred compaction, direct compaction with page capture,
// `compact_node()` and proactive compaction, and kcompactd.
//
// What the kernel does through reclaim has no counterpart here (PageAlloc has no reclaim):
// the slow path never escalates compaction priority (`should_compact_retry()` needs reclaim
// progress), so SYNC_FULL direct compaction is never reached; kswapd does not exist, so the
// skip bits are reset where it would go to sleep: when the slow path would wake it
// (`wakeKswapd`), when kcompactd sleeps, and by ``resetIsolationSuitable()``;
// `too_many_isolated()` is never true; the LRU is absent, so only pages with movable
// operations (MovablePages.swift) move. The fast searches (`fast_find_migrateblock()`,
// `fast_isolate_freepages()`) are not modelled: the linear scanners alone are correct, and
// their trace events do not appear.

/// COMPACT_CLUSTER_MAX (= SWAP_CLUSTER_MAX): pages isolated per migration batch.
let compactClusterMax = 32
/// COMPACT_MAX_DEFER_SHIFT: defer at most 1 << 6 = 64 attempts.
let compactMaxDeferShift = 6
/// `compact_gap()` of the 2026 tree caps the gap at COMPACT_CLUSTER_MAX pages; older trees
/// use `2 << order`. False switches back to the older form.
let compactGapCapped = true

/// `enum compact_priority`: a lower number is a higher priority.
enum CompactPriority: Int {
  case syncFull = 0
  case syncLight = 1
  case async = 2
}

/// The watermark an `alloc_flags` selects (ALLOC_WMARK_MIN/LOW/HIGH).
enum WatermarkKind {
  case min, low, high
}

/// `isolate_migrate_t`.
enum IsolateMigrateResult {
  case abort, none, success
}

/// One compaction run over one zone: `struct compact_control`.
struct CompactControl: MigrationTargets {
  /// Isolated free pages, kept whole, one list per order.
  var freepages: [[Int]] = Array(repeating: [], count: PageGeometry.orderCount)
  var migratepages: [IsolatedMovable] = []
  var nrFreepages = 0
  var nrMigratepages = 0
  var freePfn = 0
  var migratePfn = 0
  let zi: Int
  var totalMigrateScanned = 0
  var totalFreeScanned = 0
  /// The requested order; -1 for the whole zone (`is_via_compact_memory()`).
  var order: Int
  var gfp: GFP
  var migratetype: Int
  var watermark: WatermarkKind = .min
  /// ALLOC_CMA.
  var allocCMA = false
  /// The highest zone kind of the request (lowmem_reserve index).
  var highestZoneKind: Int
  var mode: MigrationMode
  var ignoreSkipHint = false
  var noSetSkipHint = false
  var ignoreBlockSuitable = false
  var directCompaction = false
  var proactiveCompaction = false
  var wholeZone = false
  var contended = false
  var finishPageblock = false
  var allocContig = false

  init(zi: Int, order: Int, gfp: GFP, mode: MigrationMode, highestZoneKind: Int) {
    self.zi = zi
    self.order = order
    self.gfp = gfp
    self.migratetype = gfp.migrateType.rawValue
    self.mode = mode
    self.highestZoneKind = highestZoneKind
  }

  /// `compaction_alloc()`: the smallest isolated free page of at least the source's order,
  /// split buddy-style; the free scanner runs (once per request) when none is left.
  mutating func allocateTarget(_ a: PageAllocator, for source: IsolatedMovable) -> Int? {
    let need = source.order
    var scanned = false
    while true {
      var o = need
      while o <= PageGeometry.maxOrder && freepages[o].isEmpty { o += 1 }
      if o > PageGeometry.maxOrder {
        if scanned { return nil }
        a.isolateFreepages(&self)
        scanned = true
        continue
      }
      let p = freepages[o].removeLast()
      while o > need {
        o -= 1
        freepages[o].append(p + (1 << o))
      }
      a.prepareTarget(p, order: need, compound: a.isCompound(source.pfn))
      a.tracePageAlloc(p, need, MigrateType.movable.rawValue, .movable)
      nrFreepages -= 1 << need
      nrMigratepages -= 1 << need
      return p
    }
  }

  /// `compaction_free()`: an unused target goes back on its list.
  mutating func releaseTarget(_ a: PageAllocator, _ pfn: Int, order: Int) {
    if a.unprepareTarget(pfn, order: order) {
      a.tracePageFree(pfn, order)
      freepages[order].append(pfn)
      nrFreepages += 1 << order
    }
    nrMigratepages += 1 << order
  }
}

extension PageAllocator {
  // MARK: - Geometry

  @inline(__always) static func pageblockStart(_ p: Int) -> Int { p & ~(PageGeometry.pageblockPages - 1) }
  /// ALIGN(p + 1, pageblock_nr_pages): the end of the pageblock holding `p`.
  @inline(__always) static func pageblockEnd(_ p: Int) -> Int {
    (p + PageGeometry.pageblockPages) & ~(PageGeometry.pageblockPages - 1)
  }

  /// `pageblock_pfn_to_page()`: whether `[start, end)` has a first and a last page in zone
  /// `zi` (the kernel's check for holes and zone boundaries).
  func pageblockValid(_ start: Int, _ end: Int, _ zi: Int) -> Bool {
    guard end > start, memMap.record(start) != nil, memMap.record(end - 1) != nil else { return false }
    let z = zones + zi
    return start >= z.pointee.start && end <= z.pointee.end
  }

  // MARK: - Skip bits

  /// PB_compact_skip: a bit of the pageblock byte beside the type and the isolate bit.
  static let skipBit: UInt8 = 1 << 4

  func pageblockSkip(_ pfn: Int) -> Bool {
    memMap.pageblocks[memMap.pageblockIndex(pfn)].load(ordering: .relaxed) & PageAllocator.skipBit != 0
  }

  func setPageblockSkip(_ pfn: Int) {
    (memMap.pageblocks + memMap.pageblockIndex(pfn)).pointee.bitwiseOr(PageAllocator.skipBit, ordering: .relaxed)
  }

  func clearPageblockSkip(_ pfn: Int) {
    (memMap.pageblocks + memMap.pageblockIndex(pfn)).pointee.bitwiseAnd(~PageAllocator.skipBit, ordering: .relaxed)
  }

  /// `isolation_suitable()`.
  func isolationSuitable(_ cc: CompactControl, _ pfn: Int) -> Bool {
    cc.ignoreSkipHint || !pageblockSkip(pfn)
  }

  /// `reset_cached_positions()`.
  func resetCachedPositions(_ zi: Int) {
    let c = compaction.zones + zi
    let z = zones + zi
    c.pointee.cachedMigrate0.store(z.pointee.start, ordering: .relaxed)
    c.pointee.cachedMigrate1.store(z.pointee.start, ordering: .relaxed)
    c.pointee.cachedFree.store(PageAllocator.pageblockStart(z.pointee.end - 1), ordering: .relaxed)
  }

  /// `update_cached_migrate()`: note that the kernel rounds `pfn + 1` up, so an aligned pfn
  /// moves the cache one pageblock further; reproduced.
  func updateCachedMigrate(_ cc: CompactControl, _ pfn: Int) {
    if cc.noSetSkipHint { return }
    let p = PageAllocator.pageblockEnd(pfn)
    let c = compaction.zones + cc.zi
    if p > c.pointee.cachedMigrate0.load(ordering: .relaxed) { c.pointee.cachedMigrate0.store(p, ordering: .relaxed) }
    if cc.mode != .async && p > c.pointee.cachedMigrate1.load(ordering: .relaxed) {
      c.pointee.cachedMigrate1.store(p, ordering: .relaxed)
    }
  }

  /// `update_pageblock_skip()` of the free scanner.
  func updatePageblockSkip(_ cc: CompactControl, _ block: Int, _ pfn: Int) {
    if cc.noSetSkipHint { return }
    setPageblockSkip(block)
    let c = compaction.zones + cc.zi
    if pfn < c.pointee.cachedFree.load(ordering: .relaxed) { c.pointee.cachedFree.store(pfn, ordering: .relaxed) }
  }

  /// `__reset_isolation_pfn()`: whether the pageblock at `pfn` holds a source (a movable
  /// page) or a target (a free page), sampling every 8th page; clears its skip bit when so.
  func resetIsolationPfn(_ zi: Int, _ pfn: Int, checkSource: Bool, checkTarget: Bool) -> Bool {
    let block = PageAllocator.pageblockStart(pfn)
    let z = zones + zi
    guard block >= z.pointee.start, block + PageGeometry.pageblockPages <= z.pointee.end,
      let first = memMap.record(block)
    else { return false }
    // A compound page of pageblock order or more stays skipped.
    let fw = first.pointee.flags.load(ordering: .relaxed)
    if fw & PG.head != 0 && PG.order(fw) >= PageGeometry.pageblockOrder { return false }
    if checkSource && checkTarget && !pageblockSkip(block) { return true }
    if !checkSource && checkTarget && memMap.storedMigrateType(block) != .movable { return false }
    var p = block
    while p < block + PageGeometry.pageblockPages {
      let w = memMap.presentRecord(p).pointee.flags.load(ordering: .relaxed)
      if (checkSource && w & PG.movable != 0) || (checkTarget && w & PG.buddy != 0) {
        clearPageblockSkip(block)
        return true
      }
      p += 1 << PageGeometry.costlyOrder
    }
    return false
  }

  /// `__reset_isolation_suitable()`: when a flush is pending, walks a cursor up from the
  /// zone's start and one down from its end, clearing the skip bit of blocks that still
  /// hold sources or targets (a sampled reset, not a wipe), and moves the cached scanner
  /// positions to the first such blocks.
  func resetIsolationSuitableZone(_ zi: Int) {
    let c = compaction.zones + zi
    guard c.pointee.blockskipFlush.exchange(false, ordering: .relaxed) else { return }
    let z = zones + zi
    var migratePfn = z.pointee.start
    var freePfn = z.pointee.end - 1
    var resetMigrate = freePfn
    var resetFree = migratePfn
    var sourceSet = false
    var freeSet = false
    while migratePfn < freePfn {
      if resetIsolationPfn(zi, migratePfn, checkSource: true, checkTarget: freeSet) && !sourceSet {
        resetMigrate = migratePfn
        c.pointee.initMigrate.store(migratePfn, ordering: .relaxed)
        c.pointee.cachedMigrate0.store(migratePfn, ordering: .relaxed)
        c.pointee.cachedMigrate1.store(migratePfn, ordering: .relaxed)
        sourceSet = true
      }
      if resetIsolationPfn(zi, freePfn, checkSource: sourceSet, checkTarget: true) && !freeSet {
        resetFree = freePfn
        let f = PageAllocator.pageblockStart(freePfn)
        c.pointee.initFree.store(f, ordering: .relaxed)
        c.pointee.cachedFree.store(f, ordering: .relaxed)
        freeSet = true
      }
      migratePfn += PageGeometry.pageblockPages
      freePfn -= PageGeometry.pageblockPages
    }
    // Nothing suitable: leave no distance between the scanners.
    if resetMigrate >= resetFree {
      c.pointee.cachedMigrate0.store(migratePfn, ordering: .relaxed)
      c.pointee.cachedMigrate1.store(migratePfn, ordering: .relaxed)
      c.pointee.cachedFree.store(PageAllocator.pageblockStart(max(freePfn, z.pointee.start)), ordering: .relaxed)
    }
  }

  /// `reset_isolation_suitable()` for every zone: the flush the kernel's kswapd does before
  /// it sleeps. Here kcompactd does it before it sleeps, and anyone may call it. It only
  /// acts on zones whose last direct compaction met the scanners (a pending flush).
  public func resetIsolationSuitable() {
    for zi in 0..<zoneCount where zones[zi].present > 0 { resetIsolationSuitableZone(zi) }
  }

  // MARK: - Deferral

  /// `defer_compaction()`: after a failure, skip the next `1 << shift` attempts.
  func deferCompaction(_ zi: Int, _ order: Int) {
    let c = compaction.zones + zi
    c.pointee.considered.store(0, ordering: .relaxed)
    let s = c.pointee.deferShift.load(ordering: .relaxed)
    c.pointee.deferShift.store(min(s + 1, compactMaxDeferShift), ordering: .relaxed)
    if order < c.pointee.orderFailed.load(ordering: .relaxed) { c.pointee.orderFailed.store(order, ordering: .relaxed) }
    traceDefer(.compactionDeferCompaction, zi, order)
  }

  /// `compaction_deferred()`: whether to skip compaction of `order` this time.
  func compactionDeferred(_ zi: Int, _ order: Int) -> Bool {
    let c = compaction.zones + zi
    if order < c.pointee.orderFailed.load(ordering: .relaxed) { return false }
    let limit = 1 << c.pointee.deferShift.load(ordering: .relaxed)
    let considered = c.pointee.considered.load(ordering: .relaxed) + 1
    if considered >= limit {
      c.pointee.considered.store(limit, ordering: .relaxed)
      return false
    }
    c.pointee.considered.store(considered, ordering: .relaxed)
    traceDefer(.compactionDeferred, zi, order)
    return true
  }

  /// `compaction_defer_reset()`.
  func compactionDeferReset(_ zi: Int, _ order: Int, allocSuccess: Bool) {
    let c = compaction.zones + zi
    if allocSuccess {
      c.pointee.considered.store(0, ordering: .relaxed)
      c.pointee.deferShift.store(0, ordering: .relaxed)
    }
    if order >= c.pointee.orderFailed.load(ordering: .relaxed) {
      c.pointee.orderFailed.store(order + 1, ordering: .relaxed)
    }
    traceDefer(.compactionDeferReset, zi, order)
  }

  /// `compaction_restarting()`: deferral has run its full course.
  func compactionRestarting(_ zi: Int, _ order: Int) -> Bool {
    let c = compaction.zones + zi
    return order >= c.pointee.orderFailed.load(ordering: .relaxed)
      && c.pointee.deferShift.load(ordering: .relaxed) == compactMaxDeferShift
      && c.pointee.considered.load(ordering: .relaxed) >= 1 << compactMaxDeferShift
  }

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

  // MARK: - The migrate scanner

  /// `skip_isolation_on_order()`.
  static func skipIsolationOnOrder(_ folioOrder: Int, _ targetOrder: Int) -> Bool {
    if targetOrder != -1 && folioOrder >= targetOrder { return true }
    return folioOrder >= PageGeometry.pageblockOrder
  }

  /// `suitable_migration_source()`.
  func suitableMigrationSource(_ cc: CompactControl, _ block: Int) -> Bool {
    let w = memMap.presentRecord(block).pointee.flags.load(ordering: .relaxed)
    if w & PG.head != 0 && PG.order(w) >= PageGeometry.pageblockOrder { return false }
    if !cc.directCompaction { return true }
    let bt = memMap.storedMigrateType(block)
    if bt == .cma && !cc.allocCMA { return false }
    if cc.mode != .async { return true }
    if cc.migratetype == MigrateType.movable.rawValue || cc.order >= PageGeometry.pageblockOrder {
      return bt == .movable || bt == .cma
    }
    return bt.rawValue == cc.migratetype
  }

  /// `isolate_migratepages_block()`: scans `[lowPfn, endPfn)` and isolates the movable
  /// blocks it finds into `cc.migratepages`. Sets `cc.migratePfn` to the next pfn to scan.
  /// Never fails here (no fatal signals, `too_many_isolated()` never true): returns 0.
  @discardableResult
  func isolateMigratepagesBlock(_ cc: inout CompactControl, _ lowPfnIn: Int, _ endPfn: Int) -> Int {
    cc.migratePfn = lowPfnIn
    let startPfn = lowPfnIn
    let z = zones + cc.zi
    var lowPfn = lowPfnIn
    var nrScanned = 0
    var nrIsolated = 0
    var validPage = -1
    let skipOnFailure = cc.directCompaction && cc.mode == .async && cc.order > 0
    var nextSkipPfn = 0
    if skipOnFailure { nextSkipPfn = (lowPfn + (1 << cc.order)) & ~((1 << cc.order) - 1) }
    scan: while lowPfn < endPfn {
      var failed = false
      step: do {
        if skipOnFailure && lowPfn >= nextSkipPfn {
          // A whole order-aligned chunk isolated without a failure: migrate it now.
          if nrIsolated > 0 { break scan }
          nextSkipPfn = (lowPfn + (1 << cc.order)) & ~((1 << cc.order) - 1)
        }
        nrScanned += 1
        if validPage < 0 && (lowPfn & (PageGeometry.pageblockPages - 1) == 0 || lowPfn == z.pointee.start) {
          if !isolationSuitable(cc, lowPfn) {
            lowPfn = endPfn
            break scan
          }
          validPage = lowPfn
        }
        let r = memMap.presentRecord(lowPfn)
        let w = r.pointee.flags.load(ordering: .acquiring)
        if w & PG.buddy != 0 {
          // A free block is skipped whole: not a failure.
          let o = PG.order(w)
          if o > 0 && o <= PageGeometry.maxOrder {
            lowPfn += (1 << o) - 1
            nrScanned += (1 << o) - 1
          }
          break step
        }
        if w & PG.head != 0 && !cc.allocContig {
          let o = PG.order(w)
          if PageAllocator.skipIsolationOnOrder(o, cc.order) {
            lowPfn += (1 << o) - 1
            nrScanned += (1 << o) - 1
            failed = true
            break step
          }
        }
        if w & PG.movable != 0 && w & PG.movableIsolated == 0,
          let m = isolateMovableOpsPage(lowPfn, mode: cc.mode)
        {
          let n = 1 << m.order
          cc.migratepages.append(m)
          cc.nrMigratepages += n
          nrIsolated += n
          nrScanned += n - 1
          lowPfn += n - 1
          if cc.nrMigratepages >= compactClusterMax && !cc.finishPageblock && !cc.contended {
            lowPfn += 1
            break scan
          }
          break step
        }
        // Anything else is unmovable here: allocated without an owner, pinned, frozen,
        // on a pcp list, a compound tail, reserved.
        failed = true
      }
      if failed && skipOnFailure {
        // This order-aligned chunk cannot become free: give up what it isolated.
        if nrIsolated > 0 {
          putbackMovablePages(&cc.migratepages)
          cc.nrMigratepages = 0
          nrIsolated = 0
        }
        if lowPfn < nextSkipPfn {
          lowPfn = nextSkipPfn - 1
          nextSkipPfn += 1 << cc.order
        }
      }
      lowPfn += 1
    }
    if lowPfn > endPfn { lowPfn = endPfn }
    if lowPfn == endPfn && (nrIsolated == 0 || cc.finishPageblock) {
      if !cc.noSetSkipHint && validPage >= 0 { setPageblockSkip(validPage) }
      updateCachedMigrate(cc, lowPfn)
    }
    traceCompaction(.compactionIsolateMigratepages, [startPfn, lowPfn, nrScanned, nrIsolated])
    cc.totalMigrateScanned += nrScanned
    compaction.counters.compactIsolated.wrappingAdd(nrIsolated, ordering: .relaxed)
    cc.migratePfn = lowPfn
    return 0
  }

  /// `isolate_migratepages()`: from `cc.migratePfn` up, the first suitable pageblock below
  /// the free scanner is scanned for movable blocks.
  func isolateMigratepages(_ cc: inout CompactControl) -> IsolateMigrateResult {
    let z = zones + cc.zi
    var lowPfn = cc.migratePfn
    var blockStart = max(PageAllocator.pageblockStart(lowPfn), z.pointee.start)
    var blockEnd = PageAllocator.pageblockEnd(lowPfn)
    while blockEnd <= cc.freePfn {
      let atBlockStart = lowPfn & (PageGeometry.pageblockPages - 1) == 0 || lowPfn == z.pointee.start
      if pageblockValid(blockStart, blockEnd, cc.zi) && !(atBlockStart && !isolationSuitable(cc, blockStart)) {
        if suitableMigrationSource(cc, blockStart) {
          // The block scan sets cc.migratePfn to where it stopped.
          isolateMigratepagesBlock(&cc, lowPfn, blockEnd)
          return cc.nrMigratepages > 0 ? .success : .none
        }
        updateCachedMigrate(cc, blockEnd)
      }
      cc.migratePfn = blockEnd
      lowPfn = blockEnd
      blockStart = blockEnd
      blockEnd += PageGeometry.pageblockPages
    }
    return cc.nrMigratepages > 0 ? .success : .none
  }

  // MARK: - The free scanner

  /// `suitable_migration_target()`. Departure: an Isolate pageblock is never a target,
  /// even for SYNC_FULL direct compaction (`ignore_block_suitable`), which the kernel would
  /// let take pages a contiguous-range allocation is gathering.
  func suitableMigrationTarget(_ cc: CompactControl, _ block: Int) -> Bool {
    let w = memMap.presentRecord(block).pointee.flags.load(ordering: .relaxed)
    if w & PG.buddy != 0 && PG.order(w) >= (cc.order > 0 ? cc.order : PageGeometry.pageblockOrder) { return false }
    if memMap.isIsolated(block) { return false }
    if cc.ignoreBlockSuitable { return true }
    let t = memMap.storedMigrateType(block)
    return t == .movable || t == .cma
  }

  /// `__isolate_free_page()` (zone lock held): takes a free block off its list for a
  /// target, unless that would take the zone below its min watermark. A block of half a
  /// pageblock or more turns its pageblocks Movable, free pages and all.
  func isolateFreePage(_ zi: Int, _ pfn: Int, _ order: Int) -> Int {
    let z = zones + zi
    let mt = memMap.freeListTypeRaw(pfn)
    if mt != MigrateType.isolate.rawValue {
      let mark = z.pointee.wmarkMin + (1 << order)
      let free = z.pointee.nrFreePages.load(ordering: .relaxed)
      if free <= mark + z.pointee.lowmemReserve[0] { return 0 }
    }
    delFromFreeList(z, pfn, order, mt)
    if order >= PageGeometry.pageblockOrder - 1 {
      var b = PageAllocator.pageblockStart(pfn)
      while b < pfn + (1 << order) {
        let t = memMap.storedMigrateType(b)
        if t.isMergeable && !memMap.isIsolated(b) && t != .movable { moveFreepagesBlock(zi, b, to: .movable) }
        b += PageGeometry.pageblockPages
      }
    }
    return 1 << order
  }

  /// `move_freepages_block()` (zone lock held): re-types the pageblock at `block` and moves
  /// its free blocks to the new type's lists. A pageblock straddling the zone's edge is
  /// left alone, as `prep_move_freepages_block()` does.
  func moveFreepagesBlock(_ zi: Int, _ block: Int, to: MigrateType) {
    let z = zones + zi
    guard block >= z.pointee.start, block + PageGeometry.pageblockPages <= z.pointee.end else { return }
    let from = memMap.freeListTypeRaw(block)
    var p = block
    while p < block + PageGeometry.pageblockPages {
      let w = memMap.presentRecord(p).pointee.flags.load(ordering: .relaxed)
      if w & PG.buddy != 0 {
        let o = PG.order(w)
        moveFreeBlock(z, p, o, from: from, to: to.rawValue)
        p += 1 << o
      } else {
        p += 1
      }
    }
    memMap.setMigrateType(block, to)
  }

  /// `isolate_freepages_block()`: takes the free blocks of `[startPfn, endPfn)` (every
  /// `stride`-th pfn) into `cc.freepages`, whole, until there are as many free pages as
  /// pages to migrate. Returns the pages isolated; `startPfn` gets where it stopped.
  func isolateFreepagesBlock(_ cc: inout CompactControl, _ startPfn: inout Int, _ endPfn: Int, _ strideIn: Int) -> Int {
    let z = zones + cc.zi
    let stride = max(strideIn, 1)
    var nrScanned = 0
    var total = 0
    var locked = false
    var pfn = startPfn
    while pfn < endPfn {
      if pfn % compactClusterMax == 0 && locked {
        // Let others have the zone lock now and then (compact_unlock_should_abort()).
        z.pointee.lock.unlock()
        locked = false
      }
      nrScanned += 1
      let w = memMap.presentRecord(pfn).pointee.flags.load(ordering: .relaxed)
      if w & PG.head != 0 {
        let o = PG.order(w)
        if o <= PageGeometry.maxOrder && pfn + (1 << o) <= endPfn {
          pfn += (1 << o) - 1
          nrScanned += (1 << o) - 1
        }
        pfn += stride
        continue
      }
      if w & PG.buddy == 0 {
        pfn += stride
        continue
      }
      if !locked {
        if cc.mode == .async {
          if !z.pointee.lock.tryLock() {
            cc.contended = true
            z.pointee.lock.lock()
          }
        } else {
          z.pointee.lock.lock()
        }
        locked = true
      }
      let w2 = memMap.presentRecord(pfn).pointee.flags.load(ordering: .relaxed)
      guard w2 & PG.buddy != 0 else {
        pfn += stride
        continue
      }
      let o = PG.order(w2)
      let k = isolateFreePage(cc.zi, pfn, o)
      if k == 0 { break }
      nrScanned += k - 1
      total += k
      cc.nrFreepages += k
      cc.freepages[o].append(pfn)
      if cc.nrMigratepages <= cc.nrFreepages {
        pfn += k
        break
      }
      pfn += k - 1 + stride
    }
    if locked { z.pointee.lock.unlock() }
    if pfn > endPfn { pfn = endPfn }
    traceCompaction(.compactionIsolateFreepages, [startPfn, pfn, nrScanned, total])
    startPfn = pfn
    cc.totalFreeScanned += nrScanned
    compaction.counters.compactIsolated.wrappingAdd(total, ordering: .relaxed)
    return total
  }

  /// `isolate_freepages()`: from `cc.freePfn` down, pageblock by pageblock above the
  /// migrate scanner's block, until there are enough targets.
  func isolateFreepages(_ cc: inout CompactControl) {
    let z = zones + cc.zi
    var isolateStart = cc.freePfn
    var blockStart = PageAllocator.pageblockStart(cc.freePfn)
    var blockEnd = min(blockStart + PageGeometry.pageblockPages, z.pointee.end)
    let low = PageAllocator.pageblockEnd(cc.migratePfn)
    var stride = cc.mode == .async ? compactClusterMax : 1
    while blockStart >= low {
      var stop = false
      if pageblockValid(blockStart, blockEnd, cc.zi) && suitableMigrationTarget(cc, blockStart)
        && isolationSuitable(cc, blockStart)
      {
        let n = isolateFreepagesBlock(&cc, &isolateStart, blockEnd, stride)
        if isolateStart == blockEnd { updatePageblockSkip(cc, blockStart, blockStart - PageGeometry.pageblockPages) }
        if cc.nrFreepages >= cc.nrMigratepages {
          if isolateStart >= blockEnd { isolateStart = blockStart - PageGeometry.pageblockPages }
          stop = true
        } else if isolateStart < blockEnd {
          // Stopped early, on the watermark.
          stop = true
        }
        stride = n > 0 ? 1 : min(compactClusterMax, stride * 2)
      }
      if stop { break }
      blockEnd = blockStart
      blockStart -= PageGeometry.pageblockPages
      isolateStart = blockStart
    }
    cc.freePfn = isolateStart
  }

  /// `release_free_list()`: gives back the isolated free pages nothing used, through the
  /// ordinary free path; returns the highest pfn given back, or -1.
  func releaseFreeList(_ cc: inout CompactControl) -> Int {
    var high = -1
    for o in 0...PageGeometry.maxOrder {
      for p in cc.freepages[o] {
        freePrepared(p, o, cc.zi)
        high = max(high, p)
      }
      cc.freepages[o].removeAll()
    }
    cc.nrFreepages = 0
    return high
  }

  // MARK: - compact_finished

  /// `__compact_finished()`.
  func compactFinishedRaw(_ cc: inout CompactControl) -> CompactionResult {
    let zi = cc.zi
    if cc.freePfn >> PageGeometry.pageblockOrder <= cc.migratePfn >> PageGeometry.pageblockOrder {
      // The scanners met.
      resetCachedPositions(zi)
      if cc.directCompaction { compaction.zones[zi].blockskipFlush.store(true, ordering: .relaxed) }
      return cc.wholeZone ? .complete : .partialSkipped
    }
    var r: CompactionResult
    if cc.proactiveCompaction {
      let score = fragmentationScoreZone(zi)
      r = score > proactiveWatermarks().low ? .continue : .success
    } else {
      if cc.order == -1 { return .continue }
      if cc.migratePfn & (PageGeometry.pageblockPages - 1) != 0 { return .continue }
      r = .noSuitablePage
      let z = zones + zi
      let mt = cc.migratetype
      z.pointee.lock.lock()
      defer { z.pointee.lock.unlock() }
      for o in cc.order...PageGeometry.maxOrder {
        if z.pointee.lists[listIndex(o, mt)].count > 0 { return .success }
        if mt == MigrateType.movable.rawValue && z.pointee.lists[listIndex(o, MigrateType.cma.rawValue)].count > 0 {
          return .success
        }
        if mt < MigrateType.pcpTypes && canClaim(o, mt) {
          for fb in MigrateType(rawValue: mt)!.fallbacks where z.pointee.lists[listIndex(o, fb.rawValue)].count > 0 {
            return .success
          }
        }
      }
    }
    if cc.contended { r = .contended }
    return r
  }

  /// `compact_finished()`: traces the raw result; no block yet means keep going.
  func compactFinished(_ cc: inout CompactControl) -> CompactionResult {
    let r = compactFinishedRaw(&cc)
    traceCompaction(.compactionFinished, [zones[cc.zi].kind.rawValue, cc.order, r.rawValue])
    return r == .noSuitablePage ? .continue : r
  }

  // MARK: - compact_zone

  /// `drain_local_pages(zone)`: this CPU's pcp lists of the zone, so that the pages
  /// migration freed there merge (and can be captured).
  func drainLocalPages(_ zi: Int) {
    drainPagesZone(zones + zi, localPcp(zi))
  }

  /// `compact_zone()`: the migrate scanner walks up, the free scanner down, moving movable
  /// blocks from the bottom into free pages at the top, until a block of the order is free,
  /// the capture took one, or the scanners meet.
  func compactZoneRun(_ cc: inout CompactControl, capture: UnsafeMutablePointer<CaptureControl>?) -> CompactionResult {
    let zi = cc.zi
    let z = zones + zi
    let c = compaction.zones + zi
    let start = z.pointee.start
    let end = z.pointee.end
    let sync = cc.mode != .async
    cc.totalMigrateScanned = 0
    cc.totalFreeScanned = 0
    cc.nrMigratepages = 0
    cc.nrFreepages = 0
    cc.migratetype = cc.gfp.migrateType.rawValue
    if cc.order != -1 {
      let r = compactionSuitAllocationOrder(
        zi, cc.order, cc.highestZoneKind, cc.watermark, cma: cc.allocCMA, async: cc.mode == .async)
      if r != .continue { return r }
      if compactionRestarting(zi, cc.order) { resetIsolationSuitableZone(zi) }
    }
    if cc.wholeZone {
      cc.migratePfn = start
      cc.freePfn = PageAllocator.pageblockStart(end - 1)
    } else {
      cc.migratePfn =
        sync ? c.pointee.cachedMigrate1.load(ordering: .relaxed) : c.pointee.cachedMigrate0.load(ordering: .relaxed)
      cc.freePfn = c.pointee.cachedFree.load(ordering: .relaxed)
      if cc.freePfn < start || cc.freePfn >= end {
        cc.freePfn = PageAllocator.pageblockStart(end - 1)
        c.pointee.cachedFree.store(cc.freePfn, ordering: .relaxed)
      }
      if cc.migratePfn < start || cc.migratePfn >= end {
        cc.migratePfn = start
        c.pointee.cachedMigrate0.store(start, ordering: .relaxed)
        c.pointee.cachedMigrate1.store(start, ordering: .relaxed)
      }
      if cc.migratePfn <= c.pointee.initMigrate.load(ordering: .relaxed) { cc.wholeZone = true }
    }
    var lastMigratedPfn = 0
    var updateCached =
      !sync && c.pointee.cachedMigrate0.load(ordering: .relaxed) == c.pointee.cachedMigrate1.load(ordering: .relaxed)
    traceCompaction(.compactionBegin, [start, cc.migratePfn, cc.freePfn, end, sync ? 1 : 0])

    var ret = CompactionResult.continue
    loop: while true {
      ret = compactFinished(&cc)
      if ret != .continue { break }
      let iterationStart = cc.migratePfn
      cc.finishPageblock =
        PageAllocator.pageblockStart(lastMigratedPfn) == PageAllocator.pageblockStart(iterationStart)
      rescan: while true {
        switch isolateMigratepages(&cc) {
        case .abort:
          ret = .contended
          putbackMovablePages(&cc.migratepages)
          cc.nrMigratepages = 0
          break loop
        case .none:
          if updateCached {
            c.pointee.cachedMigrate1.store(c.pointee.cachedMigrate0.load(ordering: .relaxed), ordering: .relaxed)
          }
          break rescan
        case .success:
          updateCached = false
          lastMigratedPfn = max(start, PageAllocator.pageblockStart(cc.migratePfn - 1))
        }
        let n = cc.nrMigratepages
        var list = cc.migratepages
        cc.migratepages = []
        var succeeded = 0
        let err = migratePages(&list, &cc, mode: cc.mode, reason: .compaction, succeeded: &succeeded)
        traceCompaction(.compactionMigratepages, [succeeded, n - succeeded])
        cc.nrMigratepages = 0
        if err != 0 {
          putbackMovablePages(&list)
          let met = cc.freePfn >> PageGeometry.pageblockOrder <= cc.migratePfn >> PageGeometry.pageblockOrder
          if err == migrateNoMemory && !met {
            ret = .contended
            break loop
          }
          if cc.migratePfn & (PageGeometry.pageblockPages - 1) != 0 && !cc.ignoreSkipHint && !cc.finishPageblock
            && cc.mode < .sync
          {
            // Scan the rest of this block, which then gets its skip bit, rather than
            // leaving it half scanned.
            cc.finishPageblock = true
            if cc.order == PageGeometry.pageblockOrder { lastMigratedPfn = 0 }
            continue rescan
          }
        }
        if let capture, capture.pointee.page >= 0 {
          ret = .success
          break loop
        }
        break rescan
      }
      // check_drain: the scanner left the order-aligned block it migrated from.
      if cc.order > 0 && lastMigratedPfn != 0 {
        let cur = cc.migratePfn & ~((1 << cc.order) - 1)
        if lastMigratedPfn < cur {
          drainLocalPages(zi)
          lastMigratedPfn = 0
        }
      }
    }
    // out:
    if cc.nrFreepages > 0 || cc.freepages.contains(where: { !$0.isEmpty }) {
      let high = releaseFreeList(&cc)
      if high >= 0 {
        let f = PageAllocator.pageblockStart(high)
        if f > c.pointee.cachedFree.load(ordering: .relaxed) { c.pointee.cachedFree.store(f, ordering: .relaxed) }
      }
    }
    let counters = compaction.counters
    counters.compactMigrateScanned.wrappingAdd(cc.totalMigrateScanned, ordering: .relaxed)
    counters.compactFreeScanned.wrappingAdd(cc.totalFreeScanned, ordering: .relaxed)
    traceCompaction(.compactionEnd, [start, cc.migratePfn, cc.freePfn, end, sync ? 1 : 0, ret.rawValue])
    return ret
  }

  /// Runs `body` as compaction (`PF_MEMALLOC`): allocations it makes never start a direct
  /// compaction of their own.
  func asCompaction<R>(_ body: () -> R) -> R {
    let old = cpa_get_in_compaction()
    cpa_set_in_compaction(1)
    defer { cpa_set_in_compaction(old) }
    return body()
  }

  // MARK: - Public entry points

  /// Compacts each zone (or only the zone of `kind`) for a block of `order`, as kcompactd
  /// does when an allocation of that order failed: SYNC_LIGHT migration from the cached
  /// scanner positions, until a block of the order is free (``CompactionResult/success``)
  /// or the scanners meet (``CompactionResult/complete`` /
  /// ``CompactionResult/partialSkipped``). A zone where the allocation would succeed
  /// already reports success at once; a zone without the free memory compaction needs, or
  /// whose fragmentation index says the failure is lack of memory, reports
  /// ``CompactionResult/skipped``. Returns the best result over the zones.
  ///
  /// Only movable blocks (``MovablePageOwner``) move; their bytes are copied and their
  /// owners told.
  @discardableResult
  public func compactZone(order: Int, zone kind: ZoneKind? = nil) -> CompactionResult {
    precondition((1...PageGeometry.maxOrder).contains(order), "compactZone: order must be 1...MAX_PAGE_ORDER")
    var best = CompactionResult.skipped
    asCompaction {
      for zi in 0..<zoneCount where zones[zi].present > 0 && (kind == nil || zones[zi].kind == kind) {
        var cc = CompactControl(
          zi: zi, order: order, gfp: .kernel, mode: .syncLight, highestZoneKind: zones[zi].kind.rawValue)
        let r = compactZoneRun(&cc, capture: nil)
        best = max(best, r)
      }
    }
    return best
  }

  /// `compact_node()` for every zone, as writing 1 to /proc/sys/vm/compact_memory does:
  /// synchronous migration over the whole of each zone, skip bits ignored, until the
  /// scanners meet. Returns each populated zone's result.
  @discardableResult
  public func compactAll() -> [CompactionResult] {
    compactNode(proactive: false)
  }

  /// `compact_node()`: order -1 over every populated zone; proactive runs stop per zone at
  /// the low mark and count their scans as kcompactd's.
  func compactNode(proactive: Bool) -> [CompactionResult] {
    var out: [CompactionResult] = []
    asCompaction {
      for zi in 0..<zoneCount where zones[zi].present > 0 {
        var cc = CompactControl(
          zi: zi, order: -1, gfp: .kernel, mode: proactive ? .syncLight : .sync, highestZoneKind: 0)
        cc.ignoreSkipHint = true
        cc.wholeZone = true
        cc.proactiveCompaction = proactive
        out.append(compactZoneRun(&cc, capture: nil))
        if proactive {
          compaction.counters.kcompactdMigrateScanned.wrappingAdd(cc.totalMigrateScanned, ordering: .relaxed)
          compaction.counters.kcompactdFreeScanned.wrappingAdd(cc.totalFreeScanned, ordering: .relaxed)
        }
      }
    }
    return out
  }

  /// Proactive compaction, one kcompactd check: when the node's fragmentation score
  /// (``extfragScore``) is above the high mark of ``compactionProactiveness`` (90 at
  /// the default 20), every zone is compacted until its score is at or below the low mark
  /// (80). With proactiveness 0 nothing runs.
  @discardableResult
  public func compactProactively() -> ProactiveCompaction {
    let before = extfragScore
    guard shouldProactiveCompactNode(score: before) else {
      return ProactiveCompaction(ran: false, scoreBefore: before, scoreAfter: before)
    }
    _ = compactNode(proactive: true)
    return ProactiveCompaction(ran: true, scoreBefore: before, scoreAfter: extfragScore)
  }

  /// `should_proactive_compact_node()`.
  func shouldProactiveCompactNode(score: Int) -> Bool {
    compaction.proactiveness.load(ordering: .relaxed) != 0 && score > proactiveWatermarks().high
  }

  /// The compaction and migration events so far (the lines /proc/vmstat prints).
  public func compactionStatistics() -> CompactionStatistics {
    let c = compaction.counters
    return CompactionStatistics(
      pgmigrateSuccess: c.pgmigrateSuccess.load(ordering: .relaxed),
      pgmigrateFail: c.pgmigrateFail.load(ordering: .relaxed),
      thpMigrationSuccess: c.thpMigrationSuccess.load(ordering: .relaxed),
      thpMigrationFail: c.thpMigrationFail.load(ordering: .relaxed),
      thpMigrationSplit: c.thpMigrationSplit.load(ordering: .relaxed),
      compactMigrateScanned: c.compactMigrateScanned.load(ordering: .relaxed),
      compactFreeScanned: c.compactFreeScanned.load(ordering: .relaxed),
      compactIsolated: c.compactIsolated.load(ordering: .relaxed),
      compactStall: c.compactStall.load(ordering: .relaxed), compactFail: c.compactFail.load(ordering: .relaxed),
      compactSuccess: c.compactSuccess.load(ordering: .relaxed),
      compactDaemonWake: c.kcompactdWake.load(ordering: .relaxed),
      compactDaemonMigrateScanned: c.kcompactdMigrateScanned.load(ordering: .relaxed),
      compactDaemonFreeScanned: c.kcompactdFreeScanned.load(ordering: .relaxed))
  }

  /// Direct compaction in the allocation slow path (CONFIG_COMPACTION). Off: a request the
  /// free lists cannot serve fails at once, as before compaction existed.
  public var directCompactionEnabled: Bool {
    get { compaction.directEnabled.load(ordering: .relaxed) }
    set { compaction.directEnabled.store(newValue, ordering: .relaxed) }
  }

  /// `vm.compaction_proactiveness` (0...100). Setting a non-zero value makes kcompactd
  /// check the node at once, as the sysctl's write handler does.
  public var compactionProactiveness: Int {
    get { compaction.proactiveness.load(ordering: .relaxed) }
    set {
      compaction.proactiveness.store(min(max(newValue, 0), 100), ordering: .relaxed)
      if newValue > 0 { triggerProactive() }
    }
  }

  /// `vm.extfrag_threshold` (0...1000).
  public var extfragThreshold: Int {
    get { compaction.extfragThreshold.load(ordering: .relaxed) }
    set { compaction.extfragThreshold.store(min(max(newValue, 0), 1000), ordering: .relaxed) }
  }

  // MARK: - Direct compaction and capture

  /// The slow path's compaction, after the free lists failed at the min watermark (and
  /// the pcp drain that stands in for reclaim): `__alloc_pages_slowpath()`'s
  /// `__alloc_pages_direct_compact()` calls. A costly request, or a non-movable one of
  /// order above 0, compacts first at ASYNC priority and tries the free lists again; then
  /// compacts at SYNC_LIGHT (at ASYNC again with `.noRetry`, which stops there; not at all
  /// with `.noRetry` and `.thisNode`, the THP fault path). A movable request of a
  /// non-costly order compacts once at SYNC_LIGHT. With no reclaim there is no progress to
  /// retry on, so priority never rises further (`should_compact_retry()` is never reached).
  ///
  /// Departure in order: the kernel reclaims between the ASYNC and the SYNC_LIGHT attempt;
  /// here the pcp drain that models reclaim ran before both.
  @usableFromInline @inline(never)
  func allocPagesCompacting(_ order: Int, _ gfp: GFP, frozen: Bool, _ mt: Int, _ highest: Int) -> Int? {
    if gfp.contains(.kswapdReclaim) { wakeKswapd(order, highest) }
    guard compaction.directEnabled.load(ordering: .relaxed), gfp.contains(.directReclaim), gfp.contains(.io),
      cpa_get_in_compaction() == 0
    else { return nil }
    let costly = order > PageGeometry.costlyOrder
    // 2026: a costly __GFP_NORETRY request gets no direct compaction at all, unless it is
    // __GFP_THISNODE (the THP fault path) or __GFP_NOFAIL.
    if costly && gfp.contains(.noRetry) && !gfp.contains(.thisNode) && !gfp.contains(.noFail) { return nil }
    let compactFirst = costly || mt != MigrateType.movable.rawValue
    if compactFirst {
      if let p = directCompact(order, gfp, frozen: frozen, mt, highest, .async) { return p }
      if let p = freelistMin(order, gfp, frozen: frozen, mt, highest) { return p }
      // The THP fault path (NORETRY and THISNODE) stops after the asynchronous attempt.
      if gfp.contains(.noRetry) && gfp.contains(.thisNode) { return nil }
    }
    // After the first attempt the kernel raises the priority to SYNC_LIGHT, unless
    // __GFP_NORETRY keeps it at ASYNC for the one retry it gets.
    let prio: CompactPriority = compactFirst && gfp.contains(.noRetry) ? .async : .syncLight
    return directCompact(order, gfp, frozen: frozen, mt, highest, prio)
  }

  /// `wake_all_kswapds()` for a request of order above 0 with ALLOC_KSWAPD. There is no
  /// kswapd and nothing to reclaim: the model is a kswapd that wakes, finds nothing to do
  /// and goes back to sleep at once, which is when the kernel's kswapd flushes the
  /// compaction skip bits of a zone whose last direct compaction met the scanners
  /// (`reset_isolation_suitable()`) and wakes kcompactd for the order.
  func wakeKswapd(_ order: Int, _ highest: Int) {
    resetIsolationSuitable()
    wakeupKcompactd(order, highest)
  }

  /// `get_page_from_freelist()` at the min watermark less the request's reserves.
  func freelistMin(_ order: Int, _ gfp: GFP, frozen: Bool, _ mt: Int, _ highest: Int) -> Int? {
    var slow: AllocFlags = []
    if !gfp.contains(.directReclaim) {
      slow.insert(.nonBlock)
      if order > 0 && gfp.contains(.high) { slow.insert(.highAtomic) }
    }
    guard let pfn = walkZonelist(order, gfp, mt, highest, .min, slow, from: 0) else { return nil }
    prepNewPage(pfn, order, gfp, frozen: frozen)
    tracePageAlloc(pfn, order, mt, gfp)
    return pfn
  }

  /// `__alloc_pages_direct_compact()`: compacts with a capture control published, then
  /// hands out the captured block, or tries the free lists.
  func directCompact(
    _ order: Int, _ gfp: GFP, frozen: Bool, _ mt: Int, _ highest: Int, _ prio: CompactPriority
  ) -> Int? {
    let capc = UnsafeMutablePointer<CaptureControl>.allocate(capacity: 1)
    defer { capc.deallocate() }
    capc.initialize(
      to: CaptureControl(
        allocator: Unmanaged.passUnretained(self).toOpaque(), zone: -1, migratetype: mt, order: order, page: -1))
    let result = asCompaction { () -> CompactionResult in
      let previous = cpa_get_capture()
      cpa_set_capture(UnsafeMutableRawPointer(capc))
      captureArmed.wrappingAdd(1, ordering: .relaxed)
      let r = tryToCompactPages(order, gfp, highest, prio, capc)
      captureArmed.wrappingSubtract(1, ordering: .relaxed)
      cpa_set_capture(previous)
      return r
    }
    var page = capc.pointee.page
    if result == .skipped || result == .deferred, page < 0 { return nil }
    let counters = compaction.counters
    counters.compactStall.wrappingAdd(1, ordering: .relaxed)
    if page >= 0 {
      // The captured block never went through rmqueue(): no PGALLOC, no pcp.
      memMap.presentRecord(page).pointee.flags.store(PG.word(flags: 0, order: order), ordering: .relaxed)
      prepNewPage(page, order, gfp, frozen: frozen)
      tracePageAlloc(page, order, mt, gfp)
    } else if let p = freelistMin(order, gfp, frozen: frozen, mt, highest) {
      page = p
    }
    guard page >= 0, let zi = zoneIndex(page) else {
      counters.compactFail.wrappingAdd(1, ordering: .relaxed)
      return nil
    }
    compaction.zones[zi].blockskipFlush.store(false, ordering: .relaxed)
    compactionDeferReset(zi, order, allocSuccess: true)
    counters.compactSuccess.wrappingAdd(1, ordering: .relaxed)
    return page
  }

  /// `try_to_compact_pages()`: each zone of the zonelist in turn, deferred zones skipped,
  /// until one succeeds.
  func tryToCompactPages(
    _ order: Int, _ gfp: GFP, _ highest: Int, _ prio: CompactPriority, _ capc: UnsafeMutablePointer<CaptureControl>
  ) -> CompactionResult {
    traceCompaction(.compactionTryToCompactPages, [order, prio.rawValue], gfp: gfp)
    var rc = CompactionResult.skipped
    for zi in zonelist(for: highest) {
      if prio.rawValue > CompactPriority.syncFull.rawValue && compactionDeferred(zi, order) {
        rc = max(rc, .deferred)
        continue
      }
      capc.pointee.zone = zi
      var cc = CompactControl(
        zi: zi, order: order, gfp: gfp, mode: prio == .async ? .async : .syncLight, highestZoneKind: highest)
      cc.directCompaction = true
      cc.allocCMA = gfp.migrateType == .movable
      cc.wholeZone = prio == .syncFull
      cc.ignoreSkipHint = prio == .syncFull
      cc.ignoreBlockSuitable = prio == .syncFull
      var status = compactZoneRun(&cc, capture: capc)
      capc.pointee.zone = -1
      if capc.pointee.page >= 0 { status = .success }
      rc = max(rc, status)
      if status == .success {
        compactionDeferReset(zi, order, allocSuccess: false)
        break
      }
      if prio != .async && (status == .complete || status == .partialSkipped) { deferCompaction(zi, order) }
    }
    return rc
  }

  /// `compaction_capture()`, called by `__free_one_page()` at each merge step while a
  /// direct compaction on some thread has a capture control published: when the block
  /// being freed by this thread reaches the requested order in the zone being compacted,
  /// it is taken for the compacting allocation instead of going on a free list. Returns
  /// true when it took the block (the caller then stops; the block's free-page accounting
  /// never happened).
  @usableFromInline @inline(never)
  func captureFreedBlock(_ z: UnsafeMutablePointer<Zone>, _ pfn: Int, _ order: Int, _ mt: Int) -> Bool {
    guard let raw = cpa_get_capture() else { return false }
    let capc = raw.assumingMemoryBound(to: CaptureControl.self)
    guard capc.pointee.allocator == Unmanaged.passUnretained(self).toOpaque(), capc.pointee.page < 0,
      capc.pointee.zone == z.pointee.index, capc.pointee.order == order
    else { return false }
    if mt == MigrateType.cma.rawValue || mt == MigrateType.isolate.rawValue { return false }
    // Small non-movable requests must not take pieces of movable blocks.
    if order < PageGeometry.pageblockOrder && mt == MigrateType.movable.rawValue
      && capc.pointee.migratetype != MigrateType.movable.rawValue
    {
      return false
    }
    if mt != capc.pointee.migratetype { traceExtfrag(pfn, capc.pointee.order, order, capc.pointee.migratetype, mt) }
    capc.pointee.page = pfn
    return true
  }

  // MARK: - kcompactd

  /// `wakeup_kcompactd()`: notes the order a failing allocation wanted and wakes the
  /// background kcompactd when it sleeps and some zone is worth compacting.
  func wakeupKcompactd(_ order: Int, _ highest: Int) {
    guard order > 0 else { return }
    let k = compaction.kcompactd
    let highestZi = highestZoneIndex(highest)
    let waiting = k.withLock { () -> Bool in
      k.maxOrder = max(k.maxOrder, order)
      k.highestZoneIdx = min(k.highestZoneIdx, highestZi)
      return k.waiting
    }
    guard waiting, kcompactdNodeSuitable(order: order, highestZi: highestZi) else { return }
    traceCompaction(.compactionWakeupKcompactd, [0, order, zones[highestZi].kind.rawValue])
    k.withLock {
      k.woken = true
      pthread_cond_signal(k.cond)
    }
  }

  /// The index of the highest populated zone of a kind at or below `kind`.
  func highestZoneIndex(_ kind: Int) -> Int {
    var best = 0
    for zi in 0..<zoneCount where zones[zi].kind.rawValue <= kind { best = zi }
    return best
  }

  /// `kcompactd_node_suitable()`.
  func kcompactdNodeSuitable(order: Int, highestZi: Int) -> Bool {
    for zi in 0...highestZi where zones[zi].present > 0 {
      if compactionSuitAllocationOrder(zi, order, zones[zi].kind.rawValue, .min, cma: false, async: false) == .continue
      {
        return true
      }
    }
    return false
  }

  /// `kcompactd_do_work()`: compacts zones up to the highest wanted for the largest order
  /// a failing allocation wanted.
  func kcompactdDoWork() {
    let k = compaction.kcompactd
    let (order, highestZi) = k.withLock { (k.maxOrder, k.highestZoneIdx) }
    guard order > 0 else { return }
    traceCompaction(.compactionKcompactdWake, [0, order, zones[highestZi].kind.rawValue])
    compaction.counters.kcompactdWake.wrappingAdd(1, ordering: .relaxed)
    asCompaction {
      for zi in 0...highestZi where zones[zi].present > 0 {
        if compactionDeferred(zi, order) { continue }
        let kind = zones[zi].kind.rawValue
        if compactionSuitAllocationOrder(zi, order, kind, .min, cma: false, async: false) != .continue { continue }
        var cc = CompactControl(zi: zi, order: order, gfp: .kernel, mode: .syncLight, highestZoneKind: kind)
        let status = compactZoneRun(&cc, capture: nil)
        if status == .success {
          compactionDeferReset(zi, order, allocSuccess: false)
        } else if status == .partialSkipped || status == .complete {
          drainAllPages()
          deferCompaction(zi, order)
        }
        compaction.counters.kcompactdMigrateScanned.wrappingAdd(cc.totalMigrateScanned, ordering: .relaxed)
        compaction.counters.kcompactdFreeScanned.wrappingAdd(cc.totalFreeScanned, ordering: .relaxed)
      }
    }
    k.withLock {
      if k.maxOrder <= order { k.maxOrder = 0 }
      if k.highestZoneIdx >= highestZi { k.highestZoneIdx = zoneCount - 1 }
    }
  }

  /// One round of kcompactd, as its loop runs after a wait: the work failing allocations
  /// asked for when it was woken with some (`timedOut` false), else the proactive check.
  /// Returns the milliseconds kcompactd would sleep next: the period, 64 times it when
  /// proactive compaction made no progress, or nil (forever) with proactiveness 0.
  /// Deterministic: tests and benchmarks drive kcompactd with it instead of the clock.
  @discardableResult
  public func runKcompactd(timedOut: Bool = true) -> Int? {
    let k = compaction.kcompactd
    let trigger = k.withLock { () -> Bool in
      let t = k.proactiveTrigger
      k.proactiveTrigger = false
      return t
    }
    var timeout: Int? = compaction.kcompactdIntervalMs
    if !timedOut && !trigger {
      kcompactdDoWork()
    } else {
      let before = extfragScore
      if shouldProactiveCompactNode(score: before) {
        _ = compactNode(proactive: true)
        if extfragScore >= before { timeout = compaction.kcompactdIntervalMs << compactMaxDeferShift }
      }
    }
    if compaction.proactiveness.load(ordering: .relaxed) == 0 { timeout = nil }
    // No kswapd: the skip bits are flushed when kcompactd goes back to sleep.
    resetIsolationSuitable()
    return timeout
  }

  /// Writing a non-zero `vm.compaction_proactiveness`: kcompactd checks at once.
  func triggerProactive() {
    let k = compaction.kcompactd
    traceCompaction(.compactionWakeupKcompactd, [0, -1, zones[zoneCount - 1].kind.rawValue])
    k.withLock {
      k.proactiveTrigger = true
      k.woken = true
      pthread_cond_signal(k.cond)
    }
  }

  /// Starts the background kcompactd thread (``CompactionConfiguration/backgroundThread``).
  ///
  /// The thread holds the allocator only weakly, and strongly only for one round of work:
  /// an allocator its program dropped is not kept alive by its own daemon. When the last
  /// reference goes during a round, the allocator's deinit runs on the daemon's thread,
  /// which then detaches instead of joining itself.
  func startKcompactd() {
    let k = compaction.kcompactd
    let context = KcompactdContext(self, k, intervalMs: compaction.kcompactdIntervalMs)
    var tid = pthread_t()
    let rc = pthread_create(
      &tid, nil,
      { arg in
        let context = Unmanaged<KcompactdContext>.fromOpaque(arg!).takeRetainedValue()
        context.loop()
        return nil
      }, Unmanaged.passRetained(context).toOpaque())
    if rc == 0 {
      k.withLock { k.thread = tid }
    } else {
      Unmanaged.passUnretained(context).release()
    }
  }

  /// Stops the background thread (the allocator's deinit): joins it, or detaches it when
  /// the deinit runs on it.
  func stopKcompactd() {
    let k = compaction.kcompactd
    let t = k.withLock { () -> pthread_t? in
      k.stop = true
      pthread_cond_signal(k.cond)
      return k.thread
    }
    guard let t else { return }
    if pthread_equal(t, pthread_self()) != 0 {
      pthread_detach(t)
    } else {
      pthread_join(t, nil)
    }
  }
}

/// What the background kcompactd thread holds: its wait queue, and the allocator weakly.
final class KcompactdContext: @unchecked Sendable {
  weak var allocator: PageAllocator?
  let k: KcompactdState
  let intervalMs: Int

  init(_ a: PageAllocator, _ k: KcompactdState, intervalMs: Int) {
    allocator = a
    self.k = k
    self.intervalMs = intervalMs
  }

  /// `kcompactd()`: sleep (with the timeout the last round asked for), then one round.
  /// The thread uses the last CPU's pcp set: a kernel thread runs on some CPU, and a fixed
  /// one keeps its rounds reproducible.
  func loop() {
    if let a = allocator { PageAllocator.setThreadCPU(a.cpuCount - 1) }
    var timeout: Int? = allocator.map { $0.compactionProactiveness == 0 ? nil : intervalMs } ?? nil
    while true {
      allocator?.traceCompaction(.compactionKcompactdSleep, [0])
      let (stop, woken) = k.withLock { () -> (Bool, Bool) in
        k.waiting = true
        if !k.woken && !k.stop {
          if let t = timeout {
            var ts = timespec()
            clock_gettime(CLOCK_MONOTONIC, &ts)
            let ns = Int(ts.tv_nsec) + (t % 1000) * 1_000_000
            ts.tv_sec += t / 1000 + ns / 1_000_000_000
            ts.tv_nsec = ns % 1_000_000_000
            while !k.woken && !k.stop {
              if pthread_cond_timedwait(k.cond, k.mutex, &ts) == ETIMEDOUT { break }
            }
          } else {
            while !k.woken && !k.stop { pthread_cond_wait(k.cond, k.mutex) }
          }
        }
        k.waiting = false
        let w = k.woken
        k.woken = false
        return (k.stop, w)
      }
      if stop { return }
      guard let a = allocator else { return }
      timeout = a.runKcompactd(timedOut: !woken)
      if k.withLock({ k.stop }) { return }
    }
  }
}

import CPageAllocShim
import Glibc
import Synchronization

// Where compaction may look (mm/compaction.c): pageblock geometry, the per-pageblock skip
// bits and the zone's cached scanner positions, and deferred compaction after failures.

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
}

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
}

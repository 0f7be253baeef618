import CPageAllocShim
import Glibc
import Synchronization

// Direct compaction in the allocation slow path (mm/page_alloc.c
// `__alloc_pages_direct_compact()`, mm/compaction.c `try_to_compact_pages()`), with page
// capture: the block compaction frees goes straight to the caller.

extension PageAllocator {
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
}

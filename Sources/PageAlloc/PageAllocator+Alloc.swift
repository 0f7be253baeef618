import Glibc
import Synchronization

// Allocation policy: `alloc_pages()`, `__alloc_frozen_pages()`, `alloc_pages_bulk()`,
// `get_page_from_freelist()`'s zonelist walk with `zone_watermark_fast()`, `rmqueue()`,
// `prep_new_page()` / `post_alloc_hook()`, and page poisoning's fill and check.

extension PageAllocator {
  /// Allocates a block of `2^order` pages (`alloc_pages()`): the head's refcount is 1 and
  /// the tails' 0, or, with `.comp`, a compound page.
  ///
  /// The zonelist is walked as `get_page_from_freelist()` does, from the highest zone the
  /// flags allow down (Movable -> Normal -> DMA32 -> DMA): first against each zone's low
  /// watermark, with ALLOC_NOFRAGMENT when the preferred zone is Normal (fall back only by
  /// claiming whole pageblocks, so DMA32's free pageblocks are used before Normal's are
  /// mixed), then the same walk without it, then against the min watermark less the
  /// reserves `.high` (GFP_ATOMIC) may use; `.memalloc` then ignores the watermarks.
  /// PageAlloc has no reclaim and no compaction: a request that finds every zone below its
  /// watermark, or no free block of the order, returns `nil` with a warn_alloc report
  /// (unless `.noWarn`). A request that may reclaim (`.directReclaim`, as in `.kernel`)
  /// first drains every CPU's pcp lists and tries the min-watermark walk once more, as the
  /// kernel does after direct reclaim made progress but the retry still failed: reclaim
  /// frees nothing here, but the pages on pcp lists are free memory all the same.
  ///
  /// - Complexity: O(1) from a per-CPU list; O(MAX_PAGE_ORDER) from the buddy, plus
  ///   O(2^order) for `.comp`, `.zero`, page poisoning and ``Configuration/checkPages``.
  @inlinable
  public func allocPages(order: Int, gfp: GFP) -> PFN? {
    guard let p = allocInternal(order, gfp, frozen: false) else { return nil }
    return PFN(p)
  }

  /// Allocates a block whose pages all have refcount 0 (`__alloc_frozen_pages()`), to be
  /// freed with ``freeFrozenPages(_:order:)`` or ``freeContigFrozenRange(_:count:)``.
  @inlinable
  public func allocFrozenPages(order: Int, gfp: GFP) -> PFN? {
    guard let p = allocInternal(order, gfp, frozen: true) else { return nil }
    return PFN(p)
  }

  /// `alloc_pages_bulk()`: up to `count` order-0 pages, appended to `into`. Returns how many
  /// were allocated (fewer when memory runs out).
  @discardableResult
  public func allocPagesBulk(count: Int, gfp: GFP, into pages: inout [PFN]) -> Int {
    var n = 0
    while n < count {
      guard let p = allocInternal(0, gfp.union(.noWarn), frozen: false) else { break }
      pages.append(PFN(p))
      n += 1
    }
    return n
  }

  @inlinable
  func allocInternal(_ order: Int, _ gfp: GFP, frozen: Bool) -> Int? {
    if _slowPath(order < 0 || order > PageGeometry.maxOrder) {
      reportAllocFailure(order, gfp)
      return nil
    }
    if _slowPath(faultsEnabled.load(ordering: .relaxed)) && shouldInjectFailure(order, gfp) {
      // prepare_alloc_pages() fails before __alloc_frozen_pages() traces: no mm_page_alloc.
      reportAllocFailure(order, gfp, injected: true)
      return nil
    }
    let mt = gfp.migrateType.rawValue
    let highest = gfp.highestZone.rawValue
    // The common case first, kept small: the preferred zone above its low watermark.
    let first = zonelist(for: highest).preferred
    if _fastPath(first >= 0) {
      let z = zones + first
      if zoneAllocOK(z, order, z.pointee.wmarkLow, z.pointee.wmarkHigh, highest),
        let pfn = rmqueueChecked(z, first, order, mt, noFragmentFlags(z))
      {
        prepNewPage(pfn, order, gfp, frozen: frozen)
        tracePageAlloc(pfn, order, mt, gfp)
        return pfn
      }
    }
    return allocSlowWalk(order, gfp, frozen: frozen, mt, highest)
  }

  /// `alloc_flags_nofragment()` for a request whose preferred zone is `z`: ALLOC_NOFRAGMENT
  /// when it is ZONE_NORMAL (x86-64 has ZONE_DMA32 below it; one node). So GFP_KERNEL,
  /// GFP_USER and GFP_HIGHUSER requests have it, GFP_HIGHUSER_MOVABLE ones only while
  /// ZONE_MOVABLE is empty, DMA32- and DMA-limited ones never.
  @inlinable @inline(__always)
  func noFragmentFlags(_ z: UnsafeMutablePointer<Zone>) -> AllocFlags {
    z.pointee.kind == .normal ? .noFragment : []
  }

  /// The watermark a pass of the zonelist walk checks each zone against.
  @usableFromInline
  enum WalkMark {
    /// The fast path: the low watermark (ALLOC_WMARK_LOW).
    case low
    /// The slow path: the min watermark less the reserves the flags may use.
    case min
    /// ALLOC_NO_WATERMARKS: checked (so ZONE_BELOW_HIGH is kept up to date) but ignored.
    case none
  }

  /// The rest of the zonelist walk of ``allocInternal(_:_:frozen:)`` (the first zone's
  /// fast-path try failed): the fast path's other zones, its retry without
  /// ALLOC_NOFRAGMENT, then the slow path's passes.
  @usableFromInline @inline(never)
  func allocSlowWalk(_ order: Int, _ gfp: GFP, frozen: Bool, _ mt: Int, _ highest: Int) -> Int? {
    let preferred = zonelist(for: highest).preferred
    if preferred >= 0 {
      let fast = noFragmentFlags(zones + preferred)
      var pfn = walkZonelist(order, gfp, mt, highest, .low, fast, from: 1)
      if pfn == nil && fast.contains(.noFragment) {
        // Every zone failed without fragmenting one: scan again, fragmenting allowed.
        pfn = walkZonelist(order, gfp, mt, highest, .low, [], from: 0)
      }
      // The slow path (gfp_to_alloc_flags()): min watermark, the reserves of `.high`,
      // ALLOC_NON_BLOCK for a request that may not reclaim, ALLOC_HIGHATOMIC for a
      // high-order request that has both.
      var slow: AllocFlags = []
      if !gfp.contains(.directReclaim) {
        slow.insert(.nonBlock)
        if order > 0 && gfp.contains(.high) { slow.insert(.highAtomic) }
      }
      var drained = false
      while pfn == nil {
        pfn = walkZonelist(order, gfp, mt, highest, .min, slow, from: 0)
        if pfn == nil && gfp.contains(.memalloc) && !gfp.contains(.noMemalloc) {
          // __gfp_pfmemalloc_flags(): ALLOC_NO_WATERMARKS.
          pfn = walkZonelist(order, gfp, mt, highest, .none, [], from: 0)
        }
        if pfn != nil || drained || !gfp.contains(.directReclaim) || pcpPageCount == 0 { break }
        // Direct reclaim frees nothing here; the pages other CPUs hold on their pcp lists
        // are free memory all the same, so drain them once and retry.
        drained = true
        drainAllPages()
      }
      if let pfn {
        prepNewPage(pfn, order, gfp, frozen: frozen)
        tracePageAlloc(pfn, order, mt, gfp)
        return pfn
      }
    }
    reportAllocFailure(order, gfp)
    tracePageAlloc(nil, order, mt, gfp)
    return nil
  }

  /// One `get_page_from_freelist()` scan of the zonelist from entry `start`: the first zone
  /// that passes its watermark checks and has a block.
  @usableFromInline
  func walkZonelist(
    _ order: Int, _ gfp: GFP, _ mt: Int, _ highest: Int, _ mark: WalkMark, _ flags: AllocFlags, from start: Int
  ) -> Int? {
    for zi in zonelist(for: highest, from: start) {
      let z = zones + zi
      var ok: Bool
      switch mark {
      case .low:
        ok = zoneAllocOK(z, order, z.pointee.wmarkLow, z.pointee.wmarkHigh, highest)
      case .min:
        ok = zoneAllocOK(z, order, reserveMark(z.pointee.wmarkMin, gfp), reserveMark(z.pointee.wmarkHigh, gfp), highest)
      case .none:
        _ = zoneAllocOK(z, order, z.pointee.wmarkMin, z.pointee.wmarkHigh, highest)
        ok = true
      }
      if ok, let pfn = rmqueueChecked(z, zi, order, mt, flags) { return pfn }
    }
    return nil
  }

  /// The min watermark less the reserves the request may use (`__zone_watermark_ok()`'s
  /// ALLOC_MIN_RESERVE and ALLOC_NON_BLOCK discounts).
  @inlinable @inline(__always)
  func reserveMark(_ min: Int, _ gfp: GFP) -> Int {
    var m = min
    if gfp.contains(.high) {
      m &-= m / 2
      if !gfp.contains(.directReclaim) { m &-= m / 4 }
    }
    return m
  }

  /// `get_page_from_freelist()`'s watermark checks of one zone. Unless the zone is flagged
  /// ZONE_BELOW_HIGH, the high watermark (`highMark`, less the same reserves) is checked
  /// first: passing it is enough, failing it sets the flag, which tells the pcp free path
  /// to keep less (``nrPcpHigh(_:_:_:_:)``) until a drain finds the zone above high again.
  /// Then the allocation's own mark (low on the first pass, min less reserves after).
  @inlinable @inline(__always)
  func zoneAllocOK(
    _ z: UnsafeMutablePointer<Zone>, _ order: Int, _ mark: Int, _ highMark: Int, _ highest: Int
  ) -> Bool {
    if _fastPath(!z.pointee.belowHigh.load(ordering: .relaxed)) {
      if zoneWatermarkOK(z, order, highMark, highest) { return true }
      z.pointee.belowHigh.store(true, ordering: .relaxed)
    }
    return zoneWatermarkOK(z, order, mark, highest)
  }

  /// `zone_watermark_fast()` / `__zone_watermark_ok()`: the free pages less the request's
  /// `2^order - 1` must stay above the mark plus the zone's lowmem reserve for a request
  /// whose highest zone is `highest`; for order > 0 a free block of at least that order must
  /// also sit on a list of a pcp type (the kernel's HighAtomic and CMA lists, which only
  /// some requests may count, never hold a block here).
  @inlinable @inline(__always)
  func zoneWatermarkOK(_ z: UnsafeMutablePointer<Zone>, _ order: Int, _ mark: Int, _ highest: Int) -> Bool {
    if !zoneFreePagesOK(z, order, mark, highest) { return false }
    return order == 0 || zoneHasFreeBlock(z, order)
  }

  /// `__zone_watermark_ok()`'s free-block test: a block of `order` or more on a free list of
  /// a pcp type. The kernel reads the lists without the lock; here the lists are read under
  /// it (a racy read of them would be a data race in Swift), which costs order > 0
  /// allocations a lock round trip and nothing else: keeping a lock-free summary up to date
  /// instead would cost every split and merge.
  @usableFromInline @inline(never)
  func zoneHasFreeBlock(_ z: UnsafeMutablePointer<Zone>, _ order: Int) -> Bool {
    z.pointee.lock.lock()
    defer { z.pointee.lock.unlock() }
    var o = order
    while o <= PageGeometry.maxOrder {
      let l = z.pointee.lists + listIndex(o, 0)
      if l[0].head != PageRecord.nilLink || l[1].head != PageRecord.nilLink || l[2].head != PageRecord.nilLink {
        return true
      }
      o &+= 1
    }
    return false
  }

  /// The page-count half of ``zoneWatermarkOK(_:_:_:_:)``.
  @inlinable @inline(__always)
  func zoneFreePagesOK(_ z: UnsafeMutablePointer<Zone>, _ order: Int, _ mark: Int, _ highest: Int) -> Bool {
    let free = z.pointee.nrFreePages.load(ordering: .relaxed) &- (1 &<< order) &+ 1
    return free > mark &+ z.pointee.lowmemReserve[highest]
  }

  /// `rmqueue()`: the per-CPU list for pcp orders, else (also when that gives nothing)
  /// the buddy under the zone lock.
  @inlinable @inline(__always)
  func rmqueueTop(_ z: UnsafeMutablePointer<Zone>, _ zi: Int, _ order: Int, _ mt: Int, _ flags: AllocFlags) -> Int? {
    if pcpAllowedOrder(order) {
      if let p = rmqueuePcplist(z, zi, order, mt, flags) { return p }
    }
    return rmqueueBuddy(z, order, mt, flags)
  }

  /// `prep_new_page()` / `post_alloc_hook()`: refcount, compound state, zeroing; with a
  /// debugging option on, the hook's steps (PageAllocator+DebugHooks.swift). The head's
  /// flag word already holds the order. A non-compound block's tails are not touched (they
  /// are clean on the free lists): O(1) but for `.comp`, `.zero` and the debugging options.
  @inlinable @inline(__always)
  func prepNewPage(_ pfn: Int, _ order: Int, _ gfp: GFP, frozen: Bool) {
    let r = memMap.presentRecord(pfn)
    if _slowPath(gfp.contains(.comp) && order > 0) {
      r.pointee.flags.store(PG.word(flags: PG.head, order: order), ordering: .relaxed)
      var t = r + 1
      let end = r + (1 &<< order)
      while t < end {
        t.pointee.flags.store(PG.tail, ordering: .relaxed)
        t += 1
      }
    }
    r.pointee.refcount.store(frozen ? 0 : 1, ordering: .relaxed)
    if _slowPath(debugging) {
      debugAllocHook(pfn, order, gfp)
    } else if _slowPath(gfp.contains(.zero)), let a = arena.address(of: pfn) {
      memset(a, 0, PageGeometry.pageSize &<< order)
    }
  }
}

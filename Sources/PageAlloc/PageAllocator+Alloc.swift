import Glibc
import Synchronization

// Allocation policy: `alloc_pages()`, `__alloc_frozen_pages()`, `alloc_pages_bulk()`,
// `get_page_from_freelist()`'s zonelist walk with `zone_watermark_fast()`, `rmqueue()`,
// `prep_new_page()` / `post_alloc_hook()`, and page poisoning's fill and check.

extension PageAllocator {
  /// Allocates a block of `2^order` pages (`alloc_pages()`): the head's refcount is 1 and
  /// the tails' 0, or, with `.comp`, a compound page.
  ///
  /// The zonelist is walked from the highest zone the flags allow down (Movable -> Normal ->
  /// DMA32 -> DMA), first against each zone's low watermark, then against its min
  /// watermark less the reserves `.high` (GFP_ATOMIC) may use. PageAlloc has no reclaim and
  /// no compaction: a request that finds every zone below its watermark, or no free block
  /// of the order, returns `nil` with a warn_alloc report (unless `.noWarn`). A request that
  /// may reclaim (`.directReclaim`, as in `.kernel`) first drains every CPU's pcp lists and
  /// tries once more, as the kernel's direct-reclaim path does when reclaim frees nothing.
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
      if watermarkOK(z, order, z.pointee.wmarkLow, highest), let pfn = rmqueueChecked(z, first, order, mt) {
        prepNewPage(pfn, order, gfp, frozen: frozen)
        tracePageAlloc(pfn, order, mt, gfp)
        return pfn
      }
    }
    return allocSlowWalk(order, gfp, frozen: frozen, mt, highest)
  }

  /// The rest of the zonelist walk of ``allocInternal(_:_:frozen:)``: the first pass from
  /// the second zone on (the first was tried), then the min-watermark pass over all.
  @usableFromInline @inline(never)
  func allocSlowWalk(_ order: Int, _ gfp: GFP, frozen: Bool, _ mt: Int, _ highest: Int) -> Int? {
    var pass = 0
    var drained = false
    while pass < 2 {
      for zi in zonelist(for: highest, from: pass == 0 ? 1 : 0) {
        let z = zones + zi
        let mark = pass == 0 ? z.pointee.wmarkLow : reserveMark(z.pointee.wmarkMin, gfp)
        if watermarkOK(z, order, mark, highest) {
          if let pfn = rmqueueChecked(z, zi, order, mt) {
            prepNewPage(pfn, order, gfp, frozen: frozen)
            tracePageAlloc(pfn, order, mt, gfp)
            return pfn
          }
        }
      }
      pass &+= 1
      if pass == 2 && !drained && gfp.contains(.directReclaim) {
        // __alloc_pages_direct_reclaim(): when reclaim frees nothing, the kernel drains
        // every CPU's pcp lists once and retries. There is no reclaim here, but the pages
        // other CPUs hold on their pcp lists are free memory all the same.
        drained = true
        if pcpPageCount > 0 {
          drainAllPages()
          pass = 1
        }
      }
    }
    reportAllocFailure(order, gfp)
    tracePageAlloc(nil, order, mt, gfp)
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

  /// `zone_watermark_fast()`: free pages less the request must stay above the mark plus the
  /// lowmem reserve. (The kernel's extra check that a block of the order is free is left to
  /// the free lists themselves: rmqueue fails and the next zone is tried.)
  @inlinable @inline(__always)
  func watermarkOK(_ z: UnsafeMutablePointer<Zone>, _ order: Int, _ mark: Int, _ highest: Int) -> Bool {
    let free = z.pointee.nrFreePages.load(ordering: .relaxed) &- (1 &<< order) &+ 1
    return free > mark &+ z.pointee.lowmemReserve[highest]
  }

  /// `rmqueue()`: the per-CPU list for pcp orders, else the buddy under the zone lock.
  @inlinable @inline(__always)
  func rmqueueTop(_ z: UnsafeMutablePointer<Zone>, _ zi: Int, _ order: Int, _ mt: Int) -> Int? {
    if pcpAllowedOrder(order) {
      if let p = rmqueuePcplist(z, zi, order, mt) { return p }
    }
    return rmqueueBuddy(z, order, mt)
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

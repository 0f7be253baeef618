import Synchronization

// Taking a block off the buddy free lists, under the zone lock: `rmqueue_buddy()`,
// `__rmqueue()`, `__rmqueue_smallest()`, `expand()`, and the migratetype fallbacks
// `__rmqueue_claim()` (`can_claim_block()`, `try_to_claim_block()`) and `__rmqueue_steal()`.

extension PageAllocator {
  /// `rmqueue_buddy()`: one block from the buddy under the zone lock, with a fresh
  /// `__rmqueue()` mode. An ALLOC_HIGHATOMIC request tries the HighAtomic lists first, a
  /// non-blocking one falls back to them last. (No pageblock ever becomes HighAtomic here,
  /// see the README, so both find nothing; they are kept so the order of the tries is the
  /// kernel's.)
  @inlinable
  func rmqueueBuddy(_ z: UnsafeMutablePointer<Zone>, _ order: Int, _ mt: Int, _ flags: AllocFlags) -> Int? {
    z.pointee.lock.lock()
    var p: Int? = nil
    if _slowPath(flags.contains(.highAtomic)) { p = rmqueueSmallest(z, order, MigrateType.highAtomic.rawValue) }
    if p == nil {
      var mode = RmqueueMode.normal
      p = rmqueue(z, order, mt, flags, &mode)
      if _slowPath(p == nil && flags.contains(.nonBlock)) {
        p = rmqueueSmallest(z, order, MigrateType.highAtomic.rawValue)
      }
    }
    if let p {
      memMap.presentRecord(p).pointee.flags.store(PG.word(flags: 0, order: order), ordering: .relaxed)
      z.pointee.pgalloc = z.pointee.pgalloc &+ (1 &<< order)
    }
    z.pointee.lock.unlock()
    return p
  }

  /// `expand()`: splits a block of order `high` taken at `pfn` down to `low`, returning
  /// the upper halves to the free lists of `mt`.
  @inlinable @inline(__always)
  func expand(_ z: UnsafeMutablePointer<Zone>, _ pfn: Int, _ low: Int, _ high: Int, _ mt: Int) {
    var h = high
    while h > low {
      h &-= 1
      addToFreeList(z, pfn &+ (1 &<< h), h, mt, tail: false)
    }
  }

  /// `__rmqueue_smallest()`: the smallest free block of at least `order` in `mt`'s lists.
  @inlinable
  func rmqueueSmallest(_ z: UnsafeMutablePointer<Zone>, _ order: Int, _ mt: Int) -> Int? {
    var o = order
    while o <= PageGeometry.maxOrder {
      let head = z.pointee.lists[listIndex(o, mt)].head
      if head != PageRecord.nilLink {
        let pfn = Int(head)
        delFromFreeList(z, pfn, o, mt)
        expand(z, pfn, order, o, mt)
        traceZoneLocked(pfn, order, mt)
        return pfn
      }
      o &+= 1
    }
    return nil
  }

  /// `__rmqueue()`: the requested type's lists, then claiming a pageblock of a fallback
  /// type, then (without ALLOC_NOFRAGMENT) stealing one block of it. `mode` remembers what
  /// worked for the rest of one refill: after a steal the next blocks are stolen at once,
  /// after a claim the requested lists are tried first again (the claim filled them).
  @inlinable
  func rmqueue(
    _ z: UnsafeMutablePointer<Zone>, _ order: Int, _ mt: Int, _ flags: AllocFlags, _ mode: inout RmqueueMode
  ) -> Int? {
    if mode == .normal {
      if let p = rmqueueSmallest(z, order, mt) { return p }
    }
    // Only the pcp types fall back (the kernel's fallbacks[] has no row for the others).
    if mt >= MigrateType.pcpTypes { return nil }
    if mode != .steal {
      if let p = rmqueueClaim(z, order, mt, flags) {
        mode = .normal
        return p
      }
    }
    if !flags.contains(.noFragment), let p = rmqueueSteal(z, order, mt) {
      mode = .steal
      return p
    }
    return nil
  }

  /// `should_try_claim_block()`: whether falling back at a free block of order `order` may
  /// claim its whole pageblock for `startMt`: always from half a pageblock up, and at any
  /// order for Unmovable and Reclaimable requests (which would pollute a Movable block);
  /// small Movable requests only steal. (The kernel also claims whenever grouping by
  /// mobility is off, which it is below 3072 pages; PageAlloc always groups.)
  @usableFromInline
  func canClaim(_ order: Int, _ startMt: Int) -> Bool {
    if order >= PageGeometry.pageblockOrder { return true }
    if order >= PageGeometry.pageblockOrder / 2 { return true }
    return startMt == MigrateType.reclaimable.rawValue || startMt == MigrateType.unmovable.rawValue
  }

  /// `__rmqueue_claim()`: from MAX_PAGE_ORDER down, the first order with a free block on a
  /// fallback type's list (in `fallbacks[]` order) whose pageblock can be claimed for
  /// `startMt` (``tryClaimBlock(_:_:_:_:_:_:)``); stops at the first order too small to
  /// claim. With ALLOC_NOFRAGMENT only blocks of pageblock order and up are considered, so
  /// only whole pageblocks change type. Traces mm_page_alloc_extfrag on success.
  @usableFromInline
  func rmqueueClaim(_ z: UnsafeMutablePointer<Zone>, _ order: Int, _ startMt: Int, _ flags: AllocFlags) -> Int? {
    let fallbacks = MigrateType(rawValue: startMt)!.fallbacks
    var minOrder = order
    if order < PageGeometry.pageblockOrder && flags.contains(.noFragment) { minOrder = PageGeometry.pageblockOrder }
    var current = PageGeometry.maxOrder
    while current >= minOrder {
      if !canClaim(current, startMt) { break }
      for fb in fallbacks {
        let head = z.pointee.lists[listIndex(current, fb.rawValue)].head
        if head == PageRecord.nilLink { continue }
        if let p = tryClaimBlock(z, Int(head), current, order, startMt, fb.rawValue) {
          z.pointee.fallbackAllocs = z.pointee.fallbackAllocs &+ 1
          traceExtfrag(p, order, current, startMt, fb.rawValue)
          return p
        }
        break
      }
      current -= 1
    }
    return nil
  }

  /// `prep_move_freepages_block()`'s counts for the pageblock `start..<end`: its free pages,
  /// and its movable pages in use (PageLRU or page_has_movable_ops; with no LRU, only pages
  /// with movable owners, whose compound tails count with their head). The claim and its
  /// prediction both read them here.
  func pageblockFreeAndMovable(_ start: Int, _ end: Int) -> (free: Int, movable: Int) {
    var free = 0
    var movable = 0
    var p = start
    while p < end {
      guard let r = memMap.record(p) else {
        p += 1
        continue
      }
      let w = r.pointee.flags.load(ordering: .relaxed)
      if w & PG.buddy != 0 {
        let o = PG.order(w)
        free += 1 << o
        p += 1 << o
      } else {
        if w & PG.movable != 0 { movable += w & PG.head != 0 ? 1 << PG.order(w) : 1 }
        p += 1
      }
    }
    return (free, movable)
  }

  /// The pageblock of `pfn` (below pageblock order) when `try_to_claim_block()` may claim
  /// it for `startMt` from `blockMt`, else nil: at least half of it free or "alike", as
  /// `prep_move_freepages_block()` counts them. A pageblock straddling the zone's edge is
  /// never claimed (prep_move_freepages_block() refuses it): re-typing it would strand the
  /// other zone's free blocks on lists of the old type. The claim and its prediction both
  /// decide here.
  func claimablePageblock(
    _ z: UnsafeMutablePointer<Zone>, _ pfn: Int, _ startMt: Int, _ blockMt: Int
  ) -> Range<Int>? {
    let start = pfn & ~(PageGeometry.pageblockPages - 1)
    let end = start + PageGeometry.pageblockPages
    guard start >= z.pointee.start, end <= z.pointee.end else { return nil }
    let (free, movable) = pageblockFreeAndMovable(start, end)
    var alike = 0
    if startMt == MigrateType.movable.rawValue {
      alike = movable
    } else if blockMt == MigrateType.movable.rawValue {
      alike = PageGeometry.pageblockPages - free - movable
    }
    return free + alike >= PageGeometry.pageblockPages / 2 ? start..<end : nil
  }

  /// `__move_freepages_block()` over `range`: every free block starting in it moves to the
  /// list of `mt` of its order, from the list of `from` (nil: the list each block is on).
  func moveFreeBlocks(_ z: UnsafeMutablePointer<Zone>, _ range: Range<Int>, from: Int?, to mt: Int) {
    var p = range.lowerBound
    while p < range.upperBound {
      guard let r = memMap.record(p) else {
        p += 1
        continue
      }
      let w = r.pointee.flags.load(ordering: .relaxed)
      if w & PG.buddy != 0 {
        let o = PG.order(w)
        let f = from ?? memMap.freeListTypeRaw(p)
        if f != mt { moveFreeBlock(z, p, o, from: f, to: mt) }
        p += 1 << o
      } else {
        p += 1
      }
    }
  }

  /// `try_to_claim_block()`: a block of pageblock order or more is taken whole, its
  /// pageblocks retyped to `startMt` and split onto `startMt`'s lists (no
  /// mm_page_alloc_zone_locked: the kernel does not go through `__rmqueue_smallest()`). A
  /// smaller block claims its pageblock when at least half of it is free or "alike" (for a
  /// Movable request, the pages with movable owners; for an Unmovable or Reclaimable one
  /// falling back to a Movable block, the pages in use without one: there is no LRU, so a
  /// page counts as movable only when an owner registered it), then `__rmqueue_smallest()` serves
  /// the request from the retyped lists (and traces zone_locked). Watermark boosting is not
  /// modelled.
  @usableFromInline
  func tryClaimBlock(
    _ z: UnsafeMutablePointer<Zone>, _ pfn: Int, _ current: Int, _ order: Int, _ startMt: Int,
    _ blockMt: Int
  ) -> Int? {
    if current >= PageGeometry.pageblockOrder {
      delFromFreeList(z, pfn, current, blockMt)
      var b = pfn
      while b < pfn + (1 << current) {
        memMap.setMigrateType(b, MigrateType(rawValue: startMt)!)
        z.pointee.pageblocksClaimed = z.pointee.pageblocksClaimed + 1
        b += PageGeometry.pageblockPages
      }
      expand(z, pfn, order, current, startMt)
      return pfn
    }
    guard let block = claimablePageblock(z, pfn, startMt, blockMt) else { return nil }
    // __move_freepages_block(): move every free block of the pageblock, then re-type it.
    moveFreeBlocks(z, block, from: blockMt, to: startMt)
    memMap.setMigrateType(block.lowerBound, MigrateType(rawValue: startMt)!)
    z.pointee.pageblocksClaimed = z.pointee.pageblocksClaimed + 1
    return rmqueueSmallest(z, order, startMt)
  }

  /// `__rmqueue_steal()`: the smallest fallback block (from `order` up, in `fallbacks[]`
  /// order), split down to `order` with the halves left on the fallback type's lists; its
  /// pageblock keeps its type.
  @usableFromInline
  func rmqueueSteal(_ z: UnsafeMutablePointer<Zone>, _ order: Int, _ startMt: Int) -> Int? {
    let fallbacks = MigrateType(rawValue: startMt)!.fallbacks
    for current in order...PageGeometry.maxOrder {
      for fb in fallbacks {
        let head = z.pointee.lists[listIndex(current, fb.rawValue)].head
        if head == PageRecord.nilLink { continue }
        let pfn = Int(head)
        delFromFreeList(z, pfn, current, fb.rawValue)
        expand(z, pfn, order, current, fb.rawValue)
        z.pointee.fallbackAllocs = z.pointee.fallbackAllocs + 1
        // mm_page_alloc_extfrag, and no mm_page_alloc_zone_locked: the block did not come
        // through __rmqueue_smallest().
        traceExtfrag(pfn, order, current, startMt, fb.rawValue)
        return pfn
      }
    }
    return nil
  }

}

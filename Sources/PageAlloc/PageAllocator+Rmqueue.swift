import Synchronization

// Taking a block off the buddy free lists, under the zone lock: `rmqueue_buddy()`,
// `__rmqueue()`, `__rmqueue_smallest()`, `expand()`, and the migratetype fallbacks
// `__rmqueue_claim()` (`can_claim_block()`, `try_to_claim_block()`) and `__rmqueue_steal()`.

extension PageAllocator {
  /// `rmqueue_buddy()`.
  @inlinable
  func rmqueueBuddy(_ z: UnsafeMutablePointer<Zone>, _ order: Int, _ mt: Int) -> Int? {
    z.pointee.lock.lock()
    let p = rmqueue(z, order, mt)
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

  /// `__rmqueue()`: the requested type, then claiming a whole block of a fallback type,
  /// then stealing a single block.
  @inlinable
  func rmqueue(_ z: UnsafeMutablePointer<Zone>, _ order: Int, _ mt: Int) -> Int? {
    if let p = rmqueueSmallest(z, order, mt) { return p }
    if mt >= MigrateType.pcpTypes { return nil }
    if let p = rmqueueClaim(z, order, mt) { return p }
    return rmqueueSteal(z, order, mt)
  }

  /// `can_claim_block()`'s order test (`should_try_claim_block`).
  @usableFromInline
  func canClaim(_ order: Int, _ startMt: Int) -> Bool {
    if order >= PageGeometry.pageblockOrder { return true }
    if order >= PageGeometry.pageblockOrder / 2 { return true }
    return startMt == MigrateType.reclaimable.rawValue || startMt == MigrateType.unmovable.rawValue
  }

  /// `__rmqueue_claim()`: the largest block of a fallback type whose pageblock can be
  /// claimed for `startMt`.
  @usableFromInline
  func rmqueueClaim(_ z: UnsafeMutablePointer<Zone>, _ order: Int, _ startMt: Int) -> Int? {
    let fallbacks = MigrateType(rawValue: startMt)!.fallbacks
    var current = PageGeometry.maxOrder
    while current >= order {
      for fb in fallbacks {
        let head = z.pointee.lists[listIndex(current, fb.rawValue)].head
        if head == PageRecord.nilLink { continue }
        if !canClaim(current, startMt) { return nil }
        if let p = tryClaimBlock(z, Int(head), current, order, startMt, fb.rawValue) {
          z.pointee.fallbackAllocs = z.pointee.fallbackAllocs &+ 1
          return p
        }
        break
      }
      current -= 1
    }
    return nil
  }

  /// `try_to_claim_block()`.
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
    // Count the free pages of the pageblock (prep_move_freepages_block). Pages in use
    // are never counted as movable: PageAlloc has no LRU. A pageblock straddling the
    // zone's edge is never claimed (prep_move_freepages_block() refuses it): re-typing
    // it would strand the other zone's free blocks on lists of the old type.
    let start = pfn & ~(PageGeometry.pageblockPages - 1)
    let end = start + PageGeometry.pageblockPages
    guard start >= z.pointee.start, end <= z.pointee.end else { return nil }
    var free = 0
    var p = start
    while p < end {
      guard let r = memMap.record(p) else { p += 1; continue }
      let w = r.pointee.flags.load(ordering: .relaxed)
      if w & PG.buddy != 0 {
        let o = PG.order(w)
        free += 1 << o
        p += 1 << o
      } else {
        p += 1
      }
    }
    var alike = 0
    if startMt == MigrateType.movable.rawValue {
      alike = 0
    } else if blockMt == MigrateType.movable.rawValue {
      alike = PageGeometry.pageblockPages - free
    }
    guard free + alike >= PageGeometry.pageblockPages / 2 else { return nil }
    // __move_freepages_block(): move every free block of the pageblock, then re-type it.
    p = start
    while p < end {
      guard let r = memMap.record(p) else { p += 1; continue }
      let w = r.pointee.flags.load(ordering: .relaxed)
      if w & PG.buddy != 0 {
        let o = PG.order(w)
        moveFreeBlock(z, p, o, from: blockMt, to: startMt)
        p += 1 << o
      } else {
        p += 1
      }
    }
    memMap.setMigrateType(start, MigrateType(rawValue: startMt)!)
    z.pointee.pageblocksClaimed = z.pointee.pageblocksClaimed + 1
    return rmqueueSmallest(z, order, startMt)
  }

  /// `__rmqueue_steal()`: the smallest fallback block, without claiming its pageblock.
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
        // The kernel traces mm_page_alloc_extfrag here, not mm_page_alloc_zone_locked.
        return pfn
      }
    }
    return nil
  }

}

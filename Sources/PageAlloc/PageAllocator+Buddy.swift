import Synchronization

// The zone's free lists and the buddy merge: `__add_to_free_list()`,
// `__del_page_from_free_list()`, `move_to_free_list()`, `page_is_buddy()`,
// `__free_one_page()`, `free_one_page()` with `split_large_buddy()`, and
// `find_large_buddy()`. Everything here runs under zone->lock, except `zoneFreeBlock`
// (which takes it) and the lock-free lookup `freeBlockContaining`.

extension PageAllocator {
  // MARK: Intrusive list links (free lists and pcp lists alike)

  /// Links the block whose head is `pfn` (record `r`) at the head of `l`.
  @inlinable @inline(__always)
  func linkHead(_ l: UnsafeMutablePointer<FreeList>, _ pfn: Int, _ r: UnsafeMutablePointer<PageRecord>) {
    let p = UInt32(truncatingIfNeeded: pfn)
    r.pointee.prev = PageRecord.nilLink
    r.pointee.next = l.pointee.head
    if l.pointee.head != PageRecord.nilLink {
      memMap.presentRecord(Int(l.pointee.head)).pointee.prev = p
    } else {
      l.pointee.tail = p
    }
    l.pointee.head = p
    l.pointee.count = l.pointee.count &+ 1
  }

  /// Links the block whose head is `pfn` (record `r`) at the tail of `l`.
  @inlinable @inline(__always)
  func linkTail(_ l: UnsafeMutablePointer<FreeList>, _ pfn: Int, _ r: UnsafeMutablePointer<PageRecord>) {
    let p = UInt32(truncatingIfNeeded: pfn)
    r.pointee.next = PageRecord.nilLink
    r.pointee.prev = l.pointee.tail
    if l.pointee.tail != PageRecord.nilLink {
      memMap.presentRecord(Int(l.pointee.tail)).pointee.next = p
    } else {
      l.pointee.head = p
    }
    l.pointee.tail = p
    l.pointee.count = l.pointee.count &+ 1
  }

  /// Unlinks the block with record `r` from `l`.
  @inlinable @inline(__always)
  func unlink(_ l: UnsafeMutablePointer<FreeList>, _ r: UnsafeMutablePointer<PageRecord>) {
    let next = r.pointee.next
    let prev = r.pointee.prev
    if prev != PageRecord.nilLink { memMap.presentRecord(Int(prev)).pointee.next = next } else { l.pointee.head = next }
    if next != PageRecord.nilLink { memMap.presentRecord(Int(next)).pointee.prev = prev } else { l.pointee.tail = prev }
    l.pointee.count = l.pointee.count &- 1
  }

  // MARK: Free lists

  /// `__add_to_free_list()` + `account_freepages()`: puts a free block on a list.
  @inlinable @inline(__always)
  func addToFreeList(_ z: UnsafeMutablePointer<Zone>, _ pfn: Int, _ order: Int, _ mt: Int, tail: Bool) {
    let r = memMap.presentRecord(pfn)
    r.pointee.flags.store(PG.word(flags: PG.buddy, order: order), ordering: .relaxed)
    let l = z.pointee.lists + listIndex(order, mt)
    if tail { linkTail(l, pfn, r) } else { linkHead(l, pfn, r) }
    if mt != MigrateType.isolate.rawValue {
      z.pointee.nrFreePages.store(
        z.pointee.nrFreePages.load(ordering: .relaxed) &+ (1 &<< order), ordering: .relaxed)
    }
  }

  /// `__del_page_from_free_list()`: unlinks a free block and clears PageBuddy.
  @inlinable @inline(__always)
  func delFromFreeList(_ z: UnsafeMutablePointer<Zone>, _ pfn: Int, _ order: Int, _ mt: Int) {
    let r = memMap.presentRecord(pfn)
    unlink(z.pointee.lists + listIndex(order, mt), r)
    r.pointee.flags.store(0, ordering: .relaxed)
    if mt != MigrateType.isolate.rawValue {
      z.pointee.nrFreePages.store(
        z.pointee.nrFreePages.load(ordering: .relaxed) &- (1 &<< order), ordering: .relaxed)
    }
  }

  /// Moves a free block to another migratetype's list (`move_to_free_list()`).
  @usableFromInline
  func moveFreeBlock(_ z: UnsafeMutablePointer<Zone>, _ pfn: Int, _ order: Int, from: Int, to: Int) {
    delFromFreeList(z, pfn, order, from)
    addToFreeList(z, pfn, order, to, tail: true)
  }

  /// Whether `pfn` (in zone `z`) is the head of a free buddy block of exactly `order`
  /// (`page_is_buddy()`).
  @inlinable @inline(__always)
  func isBuddy(_ z: UnsafeMutablePointer<Zone>, _ pfn: Int, _ order: Int) -> Bool {
    if pfn < z.pointee.start || pfn >= z.pointee.end { return false }
    guard let r = memMap.record(pfn) else { return false }
    return r.pointee.flags.load(ordering: .relaxed) == PG.word(flags: PG.buddy, order: order)
  }

  /// `__free_one_page()`: frees a block, merging with its buddies as far as allowed.
  ///
  /// The block's migratetype is read here, under the zone lock. Merging stops at
  /// MAX_PAGE_ORDER, at a buddy that is not a free block of the same order in this zone,
  /// and at pageblock order and above when either side's type is not mergeable (HighAtomic,
  /// CMA, Isolate); two different mergeable types merge and the buddy's pageblocks take
  /// the freeing block's type. The result goes to the list tail when its next-higher buddy
  /// is free (`buddy_merge_likely()`), to the head otherwise.
  @inlinable
  func freeOneBlock(_ z: UnsafeMutablePointer<Zone>, _ pfnIn: Int, _ orderIn: Int, _ mtIn: Int) {
    var pfn = pfnIn
    var order = orderIn
    let mt = mtIn
    let capturing = captureArmed.load(ordering: .relaxed) != 0
    while order < PageGeometry.maxOrder {
      // compaction_capture(): a direct compaction on this thread may take the block.
      if _slowPath(capturing) && captureFreedBlock(z, pfn, order, mt) { return }
      let buddy = pfn ^ (1 &<< order)
      if !isBuddy(z, buddy, order) { break }
      var buddyMt = mt
      if order >= PageGeometry.pageblockOrder {
        buddyMt = memMap.freeListTypeRaw(buddy)
        if buddyMt != mt
          && (mt >= MigrateType.pcpTypes || buddyMt >= MigrateType.pcpTypes)
        {
          break
        }
      }
      delFromFreeList(z, buddy, order, buddyMt)
      if buddyMt != mt {
        // Re-type the buddy's pageblocks to ours (both are mergeable).
        var b = buddy
        while b < buddy &+ (1 &<< order) {
          memMap.setMigrateType(b, MigrateType(rawValue: mt)!)
          b &+= PageGeometry.pageblockPages
        }
      }
      pfn &= buddy
      order &+= 1
    }
    var toTail = false
    if order < PageGeometry.maxOrder &- 1 {
      let higher = (pfn ^ (1 &<< order)) & ~((1 &<< (order &+ 1)) &- 1)
      let higherBuddy = higher ^ (1 &<< (order &+ 1))
      toTail = isBuddy(z, higherBuddy, order &+ 1)
    }
    addToFreeList(z, pfn, order, mt, tail: toTail)
  }

  /// `free_one_page()` + `split_large_buddy()`: a block freed straight to the buddy, in
  /// pageblock pieces when it is larger than a pageblock, each with its own migratetype.
  @inlinable
  func zoneFreeBlockLocked(_ z: UnsafeMutablePointer<Zone>, _ pfn: Int, _ order: Int) {
    if order > PageGeometry.pageblockOrder {
      var p = pfn
      let end = pfn &+ (1 &<< order)
      while p < end {
        freeOneBlock(z, p, PageGeometry.pageblockOrder, memMap.freeListTypeRaw(p))
        p &+= PageGeometry.pageblockPages
      }
    } else {
      freeOneBlock(z, pfn, order, memMap.freeListTypeRaw(pfn))
    }
    z.pointee.pgfree = z.pointee.pgfree &+ (1 &<< order)
  }

  /// `free_one_page()`: takes the zone lock.
  @inlinable
  func zoneFreeBlock(_ z: UnsafeMutablePointer<Zone>, _ pfn: Int, _ order: Int) {
    z.pointee.lock.lock()
    zoneFreeBlockLocked(z, pfn, order)
    z.pointee.lock.unlock()
  }

  /// `find_large_buddy()`-style search: the head of the free buddy block that contains
  /// `pfn`, with its order, or nil. Lock-free reads: exact only under the zone lock; a
  /// caller that owns `pfn` never sees a false positive.
  @inlinable
  func freeBlockContaining(_ pfn: Int) -> (head: Int, order: Int, onPcp: Bool)? {
    var o = 0
    while o <= PageGeometry.maxOrder {
      let h = pfn & ~((1 &<< o) &- 1)
      if let r = memMap.record(h) {
        let w = r.pointee.flags.load(ordering: .relaxed)
        if w & PG.freeMask != 0 && PG.order(w) >= o {
          let order = PG.order(w)
          if pfn < h &+ (1 &<< order) { return (h, order, w & PG.pcp != 0) }
        }
      }
      o &+= 1
    }
    return nil
  }
}

// Page isolation (mm/page_isolation.c): pageblocks taken out of the allocator's reach so a
// range can be claimed whole. Everything here runs under the zone lock.

extension PageAllocator {
  /// `start_isolate_page_range()` for the pageblocks `[pbStart, pbEnd)` of zone `z` (both
  /// pageblock aligned and inside the zone): sets every pageblock to Isolate and moves its
  /// free blocks to the Isolate free lists.
  ///
  /// A free buddy larger than a pageblock that straddles either end of the span is split
  /// into pageblock pieces first (`split_large_buddy()`), so that only the part inside
  /// the span is isolated. Returns false, changing nothing, when a pageblock of the span is
  /// isolated already (the kernel's -EBUSY from `set_migratetype_isolate()`).
  ///
  /// Departure: the kernel's `move_freepages_block_isolate()` moves blocks without merging;
  /// here each moved block is freed onto the Isolate list through `__free_one_page()`'s
  /// merge, so two adjacent isolated pageblocks whose free halves are buddies merge (as
  /// they would if freed while isolated) and ``verify()`` never sees unmerged buddies.
  func isolatePageblocksLocked(_ z: UnsafeMutablePointer<Zone>, _ pbStart: Int, _ pbEnd: Int) -> Bool {
    var pb = pbStart
    while pb < pbEnd {
      if memMap.isIsolated(pb) { return false }
      pb += PageGeometry.pageblockPages
    }
    splitStraddlingBuddyLocked(z, pbStart, pbStart, pbEnd)
    splitStraddlingBuddyLocked(z, pbEnd - 1, pbStart, pbEnd)
    let blocks = takeFreeBlocksLocked(z, pbStart, pbEnd)
    pb = pbStart
    while pb < pbEnd {
      memMap.setIsolated(pb, true)
      pb += PageGeometry.pageblockPages
    }
    for b in blocks { freeOneBlock(z, b.pfn, b.order, MigrateType.isolate.rawValue) }
    return true
  }

  /// `undo_isolate_page_range()`: clears Isolate on the pageblocks `[pbStart, pbEnd)` and
  /// gives their free blocks back to the lists of each pageblock's own type, merging with
  /// free buddies (`__putback_isolated_page()` / `move_freepages_block_isolate()`).
  func undoIsolatePageblocksLocked(_ z: UnsafeMutablePointer<Zone>, _ pbStart: Int, _ pbEnd: Int) {
    // A free block merged across the span's edge with a pageblock isolated by someone
    // else: keep that part isolated.
    splitStraddlingBuddyLocked(z, pbStart, pbStart, pbEnd)
    splitStraddlingBuddyLocked(z, pbEnd - 1, pbStart, pbEnd)
    let blocks = takeFreeBlocksLocked(z, pbStart, pbEnd)
    var pb = pbStart
    while pb < pbEnd {
      memMap.setIsolated(pb, false)
      pb += PageGeometry.pageblockPages
    }
    for b in blocks {
      if b.order > PageGeometry.pageblockOrder {
        // Two pageblocks merged while isolated may have different types again now.
        var p = b.pfn
        let end = b.pfn + (1 << b.order)
        while p < end {
          freeOneBlock(z, p, PageGeometry.pageblockOrder, memMap.freeListTypeRaw(p))
          p += PageGeometry.pageblockPages
        }
      } else {
        freeOneBlock(z, b.pfn, b.order, memMap.freeListTypeRaw(b.pfn))
      }
    }
  }

  /// `find_large_buddy()` + `split_large_buddy()`: when a free buddy block larger than a
  /// pageblock contains `pfn` and reaches outside `[spanStart, spanEnd)`, it is taken off
  /// its list and put back as pageblock-order pieces on the same list (no merging).
  func splitStraddlingBuddyLocked(_ z: UnsafeMutablePointer<Zone>, _ pfn: Int, _ spanStart: Int, _ spanEnd: Int) {
    guard let blk = freeBlockContaining(pfn), !blk.onPcp, blk.order > PageGeometry.pageblockOrder else { return }
    let end = blk.head + (1 << blk.order)
    if blk.head >= spanStart && end <= spanEnd { return }
    let mt = memMap.freeListTypeRaw(blk.head)
    delFromFreeList(z, blk.head, blk.order, mt)
    var p = blk.head
    while p < end {
      addToFreeList(z, p, PageGeometry.pageblockOrder, mt, tail: true)
      p += PageGeometry.pageblockPages
    }
  }

  /// Takes every free buddy block whose head lies in `[start, end)` off its free list and
  /// returns them (flags cleared): the first half of moving blocks between lists when the
  /// pageblock type is about to change.
  func takeFreeBlocksLocked(_ z: UnsafeMutablePointer<Zone>, _ start: Int, _ end: Int) -> [(pfn: Int, order: Int)] {
    var out: [(pfn: Int, order: Int)] = []
    var p = start
    // Wrapping: this loop visits every page in use of the span (an alloc_contig_range of
    // 16384 pages walks them all), where overflow checks cost about 15% (callgrind).
    while p < end {
      let w = memMap.presentRecord(p).pointee.flags.load(ordering: .relaxed)
      if w & PG.buddy != 0 {
        let o = PG.order(w)
        out.append((p, o))
        p &+= 1 &<< o
      } else {
        p &+= 1
      }
    }
    for b in out { delFromFreeList(z, b.pfn, b.order, memMap.freeListTypeRaw(b.pfn)) }
    return out
  }

  /// Whether `pfn` is isolated (its pageblock's Isolate bit).
  public func isIsolated(_ pfn: PFN) -> Bool {
    guard memMap.record(pfn.value) != nil else { return false }
    return memMap.isIsolated(pfn.value)
  }
}

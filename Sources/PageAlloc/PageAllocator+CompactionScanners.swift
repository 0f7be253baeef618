import CPageAllocShim
import Glibc
import Synchronization

// compact_zone()'s two scanners (mm/compaction.c): the migrate scanner isolates movable
// pages walking up from the zone start, the free scanner isolates free pages walking down
// from the end; migration targets come from what the free scanner took.

extension PageAllocator {
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
    moveFreeBlocks(
      z, block..<(block + PageGeometry.pageblockPages), from: memMap.freeListTypeRaw(block), to: to.rawValue)
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
}

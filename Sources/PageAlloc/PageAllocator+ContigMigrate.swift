import CPageAllocShim
import Glibc

// alloc_contig_range()'s migration step (`__alloc_contig_migrate_range()`): find the pages
// that cannot move, isolate the movable ones and migrate them out of the range.

extension PageAllocator {
  /// `has_unmovable_pages()` over `[start, end)` of zone `zi` (`page_is_unmovable()` per
  /// page): the first page in use that cannot move, or nil. Free pages (refcount 0) and
  /// movable blocks pass; in ZONE_MOVABLE everything passes, as in the kernel (a page there
  /// that cannot move is found after the migration instead).
  func firstUnmovablePage(_ start: Int, _ end: Int, _ zi: Int) -> Int? {
    if zones[zi].kind == .movable { return nil }
    var p = start
    while p < end {
      let r = memMap.presentRecord(p)
      let w = r.pointee.flags.load(ordering: .relaxed)
      if w & (PG.reserved | PG.quarantined | PG.hwpoison) != 0 { return p }
      if w & PG.head != 0 {
        if w & PG.movable == 0 { return p }
        p &+= 1 &<< PG.order(w)
        continue
      }
      if r.pointee.refcount.load(ordering: .relaxed) == 0 {
        p &+= w & PG.buddy != 0 ? 1 &<< PG.order(w) : 1
        continue
      }
      if w & PG.movable == 0 { return p }
      p &+= 1
    }
    return nil
  }

  /// `__alloc_contig_migrate_range()`: isolates the movable blocks of `[start, end)` 32
  /// pages at a time and migrates them synchronously to ordinary allocations outside the
  /// (isolated) range; a batch still failing after 5 tries gives up. Returns 0, -EBUSY or
  /// -ENOMEM.
  func migrateContigRange(_ zi: Int, _ start: Int, _ end: Int, _ gfp: GFP) -> Int {
    asCompaction {
      var targetGFP = gfp.intersection([.reclaim, .io, .fs]).union([.movable, .retryMayFail, .noWarn])
      if zones[zi].kind == .movable { targetGFP.insert(.highmem) }
      var cc = CompactControl(zi: zi, order: -1, gfp: targetGFP, mode: .sync, highestZoneKind: zones[zi].kind.rawValue)
      cc.ignoreSkipHint = true
      cc.noSetSkipHint = true
      cc.allocContig = true
      var targets = ContigTargets(gfp: targetGFP)
      var pfn = start
      var tries = 0
      var ret = 0
      while pfn < end || !cc.migratepages.isEmpty {
        if cc.migratepages.isEmpty {
          cc.nrMigratepages = 0
          isolateMigratepagesRange(&cc, pfn, end)
          pfn = cc.migratePfn
          tries = 0
        } else {
          tries += 1
          if tries == 5 {
            ret = -Int(EBUSY)
            break
          }
        }
        if cc.migratepages.isEmpty { continue }
        var list = cc.migratepages
        cc.migratepages = []
        var succeeded = 0
        ret = migratePages(&list, &targets, mode: .sync, reason: .contigRange, succeeded: &succeeded)
        cc.migratepages = list
        cc.nrMigratepages = list.reduce(0) { $0 + (1 << $1.order) }
        if ret == migrateNoMemory { break }
      }
      if ret < 0 { putbackMovablePages(&cc.migratepages) }
      return ret < 0 ? ret : 0
    }
  }

  /// `isolate_migratepages_range()`: pageblock by pageblock (the first and last may be
  /// partial) until 32 pages are isolated or the range ends.
  func isolateMigratepagesRange(_ cc: inout CompactControl, _ startPfn: Int, _ endPfn: Int) {
    let z = zones + cc.zi
    var pfn = startPfn
    var blockStart = max(PageAllocator.pageblockStart(pfn), z.pointee.start)
    var blockEnd = PageAllocator.pageblockEnd(pfn)
    cc.migratePfn = startPfn
    while pfn < endPfn {
      let be = min(blockEnd, endPfn)
      if pageblockValid(blockStart, be, cc.zi) {
        isolateMigratepagesBlock(&cc, pfn, be)
        if cc.nrMigratepages >= compactClusterMax { return }
      }
      pfn = blockEnd
      blockStart = blockEnd
      blockEnd += PageGeometry.pageblockPages
    }
    cc.migratePfn = max(cc.migratePfn, min(pfn, endPfn))
  }

  /// Whether `[start, end)` holds a movable block (a quick look before migrating).
  func rangeHasMovablePage(_ start: Int, _ end: Int) -> Bool {
    var p = start
    while p < end {
      let w = memMap.presentRecord(p).pointee.flags.load(ordering: .relaxed)
      if w & PG.movable != 0 { return true }
      // A free block holds no page in use: skipped whole.
      p &+= w & PG.buddy != 0 ? 1 &<< PG.order(w) : 1
    }
    return false
  }
}

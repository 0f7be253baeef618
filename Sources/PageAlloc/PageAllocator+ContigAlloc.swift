import CPageAllocShim
import Glibc

// Contiguous ranges: `alloc_contig_range()`, `alloc_contig_frozen_range()`,
// `alloc_contig_pages()` and `alloc_contig_frozen_pages()`, with `has_unmovable_pages()`,
// `__alloc_contig_migrate_range()`, `test_pages_isolated()` and `isolate_freepages_range()`.
// Isolation itself is in PageAllocator+Isolation.swift, migration in
// PageAllocator+Migrate.swift.

/// Why ``PageAllocator/allocContigRange(_:gfp:)`` failed.
public enum ContigRangeError: Error, Equatable, Sendable, CustomStringConvertible {
  /// The range is empty, leaves its zone, touches a memmap hole, or its pageblocks cross a
  /// zone boundary; or `.comp` with a count that is not a power of two up to
  /// MAX_PAGE_ORDER (the kernel's -EINVAL).
  case invalidRange(Range<PFN>, reason: String)
  /// Flags `alloc_contig_range()` does not accept (`__alloc_contig_verify_gfp_mask()`);
  /// for ``PageAllocator/allocateContiguous(pages:gfp:)`` also `.comp` (a ``PageRun`` holds
  /// order-0 pages).
  case invalidGFP(GFP)
  /// A page of the range cannot be had: the first such pfn and why (the kernel's -EBUSY,
  /// whose `test_pages_isolated` trace names the same pfn). Movable pages are migrated
  /// out of the range first, so a busy page is one that cannot move. The free lists and
  /// pageblock types are as they were (the pcp lists have been drained, and movable pages
  /// may have moved).
  case busy(PFN, reason: BusyReason)
  /// ``PageAllocator/allocateContiguous(pages:gfp:)``: a page count outside 1...2^32.
  case invalidCount(Int)
  /// ``PageAllocator/allocateContiguous(pages:gfp:)``: no range of that many pages starting
  /// at a multiple of the count holds only free and movable pages that could be had, in the
  /// zones the flags allow.
  case noFreeRange(pages: Int, gfp: GFP)

  /// Why a page made ``ContigRangeError/busy(_:reason:)``.
  public enum BusyReason: Sendable, Hashable, CustomStringConvertible {
    /// A pageblock of the range is isolated already (another contiguous allocation).
    case pageblockIsolated
    /// An unmovable page in use (no movable owner, reserved, quarantined), found when
    /// the pageblocks were isolated (`has_unmovable_pages()`).
    case unmovable
    /// A movable page that did not migrate: pinned (an extra reference), refused by its
    /// owner, or still failing after the 5 tries of `__alloc_contig_migrate_range()`.
    case migrationFailed
    /// A movable page that could not migrate because no free memory was left for its
    /// new place (the kernel's -ENOMEM).
    case noMigrationTarget
    /// A page in use that isolation let through (a frozen page, the tail of a block whose
    /// head lies before the range) or that was allocated meanwhile.
    case inUse
    /// Freed pages kept arriving on per-CPU lists during the attempt.
    case perCPULists

    public var description: String {
      switch self {
      case .pageblockIsolated: "a pageblock is isolated already"
      case .unmovable: "unmovable page"
      case .migrationFailed: "movable page not migrated (pinned, refused by its owner, or failing after 5 tries)"
      case .noMigrationTarget: "no free memory to migrate a movable page to"
      case .inUse: "page in use"
      case .perCPULists: "pages keep arriving on per-CPU lists"
      }
    }
  }

  public var description: String {
    switch self {
    case .invalidCount(let n): "cannot allocate \(n) contiguous pages: the count must be 1...2^32"
    case .noFreeRange(let n, let g): "no free range of \(n) pages at a multiple of \(n) in the zones \(g) allows"
    case .invalidRange(let r, let why): "invalid range \(r.lowerBound)..<\(r.upperBound): \(why)"
    case .invalidGFP(let g): "alloc_contig_range does not accept gfp flags \(g)"
    case .busy(let p, let why): "range busy at pfn \(p): \(why)"
    }
  }
}

extension PageAllocator {
  /// The flags `alloc_contig_range()` accepts: the reclaim bits (`GFP_KERNEL`...) and the
  /// action bits COMP, RETRY_MAYFAIL, NOWARN, ZERO, as `__alloc_contig_verify_gfp_mask()`,
  /// plus the zone modifiers and HARDWALL that ``allocContigPages(count:gfp:)`` uses to
  /// pick its zones.
  public static let contigAllowedGFP: GFP = [
    .reclaim, .io, .fs, .hardwall, .noWarn, .retryMayFail, .noRetry, .comp, .zero, .dma, .dma32,
    .highmem, .movable,
  ]

  /// `alloc_contig_range()`: allocates exactly the pages `pfns`, each an order-0 page with
  /// refcount 1 (or, with `.comp`, one compound page of `ilog2(count)`), to be freed with
  /// ``freeContigRange(_:count:)`` (compound: ``freePages(_:order:)``).
  ///
  /// The pageblocks covering the range are isolated (set to Isolate, their free blocks
  /// moved to the Isolate lists, a straddling larger buddy split), refused when the range
  /// holds an unmovable page in use; every pcp list is drained; the movable pages of the
  /// range (``MovablePageOwner``) are migrated out, synchronously, their bytes copied and
  /// their owners told, each retried up to 5 times; then every page of the range must be
  /// free: the free blocks covering it are taken, and the over-isolated head
  /// `[outerStart, start)` and tail `[end, outerEnd)` of those blocks are given back with
  /// ``freeContigFrozenRange(_:count:)`` (onto the Isolate lists, since the blocks are still
  /// isolated). The isolation is always undone, free blocks moving back to their
  /// pageblock's type and merging.
  ///
  /// A page that cannot move makes the call throw ``ContigRangeError/busy(_:reason:)``
  /// with its pfn and the reason, after which the free lists and pageblock types are as
  /// they were (the pcp lists have been drained, as the kernel drains them too; pages
  /// migrated before the failure stay where they went). Migration has no reclaim to fall
  /// back on: a page the kernel would drop from the page cache instead of moving must move
  /// here.
  ///
  /// - Throws: ``ContigRangeError``.
  /// - Complexity: O(pages of the pageblocks covering the range).
  public func allocContigRange(_ pfns: Range<PFN>, gfp: GFP) throws(ContigRangeError) {
    try allocContigRangeInternal(pfns, gfp, frozen: false)
  }

  /// `alloc_contig_frozen_range()`: ``allocContigRange(_:gfp:)`` whose pages all have
  /// refcount 0 (frozen), to be freed with ``freeContigFrozenRange(_:count:)``.
  public func allocContigFrozenRange(_ pfns: Range<PFN>, gfp: GFP) throws(ContigRangeError) {
    try allocContigRangeInternal(pfns, gfp, frozen: true)
  }

  /// `alloc_contig_pages()`: finds and allocates `count` contiguous pages in the zones
  /// `gfp` allows (highest zone first), or returns nil.
  ///
  /// As the kernel, each zone is tried at pfns aligned to `count` (so a power-of-two count
  /// is naturally aligned), in steps of `count`, while the zone spans the candidate.
  /// Candidates with a hole or a page in use that is not movable (`pfn_range_valid_contig()`)
  /// are skipped without isolating anything; the movable pages of a candidate are migrated.
  public func allocContigPages(count: Int, gfp: GFP) -> PFN? {
    allocContigPagesInternal(count, gfp, frozen: false)
  }

  /// `alloc_contig_frozen_pages()`: ``allocContigPages(count:gfp:)`` with frozen pages.
  public func allocContigFrozenPages(count: Int, gfp: GFP) -> PFN? {
    allocContigPagesInternal(count, gfp, frozen: true)
  }

  func allocContigPagesInternal(_ count: Int, _ gfp: GFP, frozen: Bool) -> PFN? {
    guard count > 0, count <= 1 << 32, gfp.isSubset(of: PageAllocator.contigAllowedGFP) else { return nil }
    if gfp.contains(.comp) && (count & (count - 1) != 0 || count > 1 << PageGeometry.maxOrder) { return nil }
    let highest = gfp.highestZone.rawValue
    for zi in zonelist(for: highest) {
      let z = zones + zi
      let zs = z.pointee.start
      let ze = z.pointee.end
      var pfn = (zs + count - 1) / count * count
      while pfn + count <= ze {
        if contigCandidateLooksFree(pfn, count) {
          do {
            try allocContigRangeInternal(PFN(pfn)..<PFN(pfn + count), gfp, frozen: frozen)
            return PFN(pfn)
          } catch {
            // Busy or racing: try the next candidate.
          }
        }
        pfn += count
      }
    }
    if !gfp.contains(.noWarn) {
      // The order of the smallest block holding `count` pages: ceil(log2(count)).
      reportAllocFailure(count <= 1 ? 0 : PageGeometry.floorLog2(count - 1) + 1, gfp)
    }
    return nil
  }

  /// `pfn_range_valid_contig()`, lock-free: present, one zone, and every page inside a free
  /// block (buddy or pcp) or a movable block (`page_is_unmovable()` false).
  func contigCandidateLooksFree(_ start: Int, _ count: Int) -> Bool {
    var p = start
    let end = start + count
    while p < end {
      guard let r = memMap.record(p) else { return false }
      let w = r.pointee.flags.load(ordering: .relaxed)
      if w & PG.freeMask != 0 {
        p = p & ~((1 &<< PG.order(w)) &- 1) &+ (1 &<< PG.order(w))
        continue
      }
      if w & PG.movable != 0 {
        p &+= 1 &<< PG.order(w)
        continue
      }
      guard let blk = freeBlockContaining(p) else { return false }
      p = blk.head &+ (1 &<< blk.order)
    }
    return true
  }

  func allocContigRangeInternal(_ range: Range<PFN>, _ gfp: GFP, frozen: Bool) throws(ContigRangeError) {
    let start = range.lowerBound.value
    let end = range.upperBound.value
    let count = end - start
    guard count > 0 else { throw .invalidRange(range, reason: "empty range") }
    guard gfp.isSubset(of: PageAllocator.contigAllowedGFP) else {
      throw .invalidGFP(gfp.subtracting(PageAllocator.contigAllowedGFP))
    }
    let compound = gfp.contains(.comp)
    var compoundOrder = 0
    if compound {
      guard count & (count - 1) == 0, count <= 1 << PageGeometry.maxOrder, start & (count - 1) == 0 else {
        throw .invalidRange(
          range, reason: "__GFP_COMP needs a naturally aligned power of two up to 2^\(PageGeometry.maxOrder) pages")
      }
      compoundOrder = count.trailingZeroBitCount
    }
    guard let zi = zoneIndex(start), end <= zones[zi].end else {
      throw .invalidRange(range, reason: "not inside one zone")
    }
    let z = zones + zi
    let pbStart = start & ~(PageGeometry.pageblockPages - 1)
    let pbEnd = (end + PageGeometry.pageblockPages - 1) & ~(PageGeometry.pageblockPages - 1)
    guard pbStart >= z.pointee.start, pbEnd <= z.pointee.end else {
      throw .invalidRange(range, reason: "its pageblocks cross a zone boundary")
    }
    var s = pbStart
    while s < pbEnd {
      guard memMap.record(s) != nil else { throw .invalidRange(range, reason: "pfn \(PFN(s)) is in a memmap hole") }
      s = memMap.sectionEnd(s)
    }

    // 1. start_isolate_page_range(): refused when a pageblock is isolated already or the
    // range holds a page that cannot move.
    z.pointee.lock.lock()
    var pb = pbStart
    while pb < pbEnd && !memMap.isIsolated(pb) { pb += PageGeometry.pageblockPages }
    if pb < pbEnd {
      z.pointee.lock.unlock()
      throw .busy(PFN(max(pb, start)), reason: .pageblockIsolated)
    }
    if let p = firstUnmovablePage(start, end, zi) {
      z.pointee.lock.unlock()
      throw .busy(PFN(p), reason: .unmovable)
    }
    let isolated = isolatePageblocksLocked(z, pbStart, pbEnd)
    z.pointee.lock.unlock()
    guard isolated else { throw .busy(range.lowerBound, reason: .pageblockIsolated) }
    defer {
      // 9. undo_isolate_page_range(), always.
      z.pointee.lock.lock()
      undoIsolatePageblocksLocked(z, pbStart, pbEnd)
      z.pointee.lock.unlock()
    }

    // 2. drain_all_pages(zone), 3. __alloc_contig_migrate_range(): its -EBUSY falls through
    // to the test below, which names the pfn.
    drainAllPages()
    var migrateResult = 0
    if rangeHasMovablePage(start, end) { migrateResult = migrateContigRange(zi, start, end, gfp) }

    // 4. test_pages_isolated() and isolate_freepages_range() in one zone-lock section. A
    // page freed to a pcp list after the drain (its free raced the isolation) gets one
    // more drain.
    var outer: (start: Int, end: Int)? = nil
    var attempt = 0
    while true {
      if attempt > 0 { drainAllPages() }
      z.pointee.lock.lock()
      let r = takeIsolatedRangeLocked(z, start, end)
      switch r {
      case .taken(let os, let oe):
        z.pointee.lock.unlock()
        outer = (os, oe)
        traceCompaction(.testPagesIsolated, [os, end, end])
      case .onPcp:
        z.pointee.lock.unlock()
        attempt += 1
        if attempt < 3 { continue }
        throw .busy(range.lowerBound, reason: .perCPULists)
      case .busy(let p):
        z.pointee.lock.unlock()
        traceCompaction(.testPagesIsolated, [start, end, p])
        let w = memMap.presentRecord(p).pointee.flags.load(ordering: .relaxed)
        let movable = w & PG.movable != 0
        throw .busy(
          PFN(p),
          reason: movable ? (migrateResult == migrateNoMemory ? .noMigrationTarget : .migrationFailed) : .inUse)
      }
      break
    }
    guard let (outerStart, outerEnd) = outer else { return }
    // split_map_pages(): every page of the blocks taken is allocated (post_alloc_hook)
    // before the parts outside the range are freed again, so the debug steps see an
    // allocation and then a free of those parts.
    if debugging { debugAllocRangeHook(outerStart, outerEnd - outerStart, recordOrder: compoundOrder, gfp) }

    // Trim the over-isolated head and tail (__free_contig_frozen_range: Isolate lists).
    if outerStart < start { freeContigCommon(outerStart, start - outerStart, frozen: true, "allocContigRange") }
    if end < outerEnd { freeContigCommon(end, outerEnd - end, frozen: true, "allocContigRange") }

    // post_alloc_hook() per page; refcounts (set_pages_refcounted) unless frozen. One page
    // with __GFP_COMP is a plain page: prep_new_page() makes a compound page only for
    // order > 0.
    if compound && compoundOrder > 0 {
      let r = memMap.presentRecord(start)
      r.pointee.flags.store(PG.word(flags: PG.head, order: compoundOrder), ordering: .relaxed)
      var p = start + 1
      while p < end {
        memMap.presentRecord(p).pointee.flags.store(PG.tail, ordering: .relaxed)
        p += 1
      }
      r.pointee.refcount.store(frozen ? 0 : 1, ordering: .relaxed)
    } else if !frozen {
      var p = start
      while p < end {
        // Records are contiguous within a section only: go through the memmap per page.
        memMap.presentRecord(p).pointee.refcount.store(1, ordering: .relaxed)
        p += 1
      }
    }
    if !debugging && gfp.contains(.zero) {
      var p = start
      while p < end {
        if let a = arena.address(of: p) {
          a.initializeMemory(as: UInt8.self, repeating: 0, count: PageGeometry.pageSize)
        }
        p += 1
      }
    }
  }

  enum TakeResult {
    case taken(Int, Int)
    case onPcp
    case busy(Int)
  }

  /// `test_pages_isolated()` + `isolate_freepages_range()`: when every page of
  /// `[start, end)` lies in a free block on the Isolate lists, takes those blocks off the
  /// lists (their pages become frozen order-0 pages) and returns the span they covered.
  func takeIsolatedRangeLocked(_ z: UnsafeMutablePointer<Zone>, _ start: Int, _ end: Int) -> TakeResult {
    var blocks: [(pfn: Int, order: Int)] = []
    var p = start
    while p < end {
      guard let blk = freeBlockContaining(p) else { return .busy(p) }
      if blk.onPcp { return .onPcp }
      blocks.append((blk.head, blk.order))
      p = blk.head &+ (1 &<< blk.order)
    }
    for b in blocks {
      delFromFreeList(z, b.pfn, b.order, memMap.freeListTypeRaw(b.pfn))
    }
    return .taken(blocks.first!.pfn, p)
  }
}

/// The targets of `__alloc_contig_migrate_range()`: `alloc_migration_target()`, an ordinary
/// movable allocation (compound for a compound source, without reclaim for large ones);
/// unused targets are freed.
struct ContigTargets: MigrationTargets {
  let gfp: GFP

  mutating func allocateTarget(_ a: PageAllocator, for source: IsolatedMovable) -> Int? {
    var g = gfp
    if source.order > 0 {
      g.insert(.comp)
      g.remove(.directReclaim)
    }
    return a.allocPages(order: source.order, gfp: g)?.value
  }

  mutating func releaseTarget(_ a: PageAllocator, _ pfn: Int, order: Int) {
    a.freePages(PFN(pfn), order: order)
  }
}

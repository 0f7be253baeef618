import Synchronization

// The range frees of the 2026 series: `free_contig_range()`, `__free_contig_range()`,
// `free_contig_frozen_range()`, `free_pages_bulk()` with `num_pages_contiguous()`, and
// their shared core `__free_contig_range_common()` and `free_prepared_contig_range()`.

extension PageAllocator {
  // MARK: - The series: free_contig_range, the frozen range, free_pages_bulk

  /// `free_contig_range()`: puts one reference on each of `count` order-0 pages from `pfn`
  /// and frees those that reach zero, as the largest aligned power-of-two chunks.
  ///
  /// Each page is handled on its own: its reference dropped and free_pages_prepare()'s
  /// checks run. A run of freeable pages closes at a page still referenced (skipped
  /// silently: its last holder frees it later), at a page that fails the checks (reported
  /// and quarantined), and at a section or zone boundary. Each run is cut greedily into the
  /// largest aligned chunks (pfn 0 starts at MAX_PAGE_ORDER); pcp orders go to this CPU's
  /// pcp list, others to the buddy (above pageblock order in pageblock pieces with each
  /// piece's migratetype); isolated pageblocks go straight to the buddy.
  ///
  /// A compound head is refused: reported, nothing freed.
  ///
  /// - Complexity: O(count) reference drops and checks, O(chunks) list insertions.
  public func freeContigRange(_ pfn: PFN, count: Int) {
    guard count > 0 else { return }
    if let r = memMap.record(pfn.value), r.pointee.flags.load(ordering: .relaxed) & PG.head != 0 {
      reportBad(pfn.value, .compound, "free_contig_range of a compound head", "freeContigRange", quarantine: false)
      return
    }
    freeContigCommon(pfn.value, count, frozen: false, "freeContigRange")
  }

  /// `__free_contig_range()`: ``freeContigRange(_:count:)`` without the compound-head
  /// refusal (what vmalloc's vfree uses through ``freePagesBulk(_:)-([PFN])``).
  public func freeContigRangeUnchecked(_ pfn: PFN, count: Int) {
    guard count > 0 else { return }
    freeContigCommon(pfn.value, count, frozen: false, "freeContigRange")
  }

  /// `free_contig_frozen_range()`: frees `count` frozen (refcount 0) order-0 pages as
  /// chunks, with the same checks; a compound head is freed whole (its order must be
  /// ilog2(count)); a tail page is refused.
  public func freeContigFrozenRange(_ pfn: PFN, count: Int) {
    guard count > 0 else { return }
    if let r = memMap.record(pfn.value) {
      let w = r.pointee.flags.load(ordering: .relaxed)
      if w & PG.tail != 0 {
        reportBad(
          pfn.value, .compound, "free_contig_frozen_range of a tail page", "freeContigFrozenRange", quarantine: false)
        return
      }
      if w & PG.head != 0 {
        let order = PG.order(w)
        if count != 1 << order {
          reportBad(
            pfn.value, .wrongOrder, "compound order \(order) but \(count) pages", "freeContigFrozenRange",
            quarantine: false)
          return
        }
        freeFrozenPages(pfn, order: order)
        return
      }
    }
    freeContigCommon(pfn.value, count, frozen: true, "freeContigFrozenRange")
  }

  /// `free_pages_bulk()`: frees an array of order-0 pages (one reference each) by cutting it
  /// into ascending contiguous runs (`num_pages_contiguous()`, which also stops at a section
  /// boundary) and freeing each run with the chunked free. Any order works; ascending runs
  /// are what make it fast.
  public func freePagesBulk(_ pfns: [PFN]) {
    pfns.withUnsafeBufferPointer { freePagesBulk($0) }
  }

  /// ``freePagesBulk(_:)-([PFN])`` over a buffer.
  public func freePagesBulk(_ pfns: UnsafeBufferPointer<PFN>) {
    let n = pfns.count
    var i = 0
    while i < n {
      let start = pfns[i].value
      let secEnd = start >= memMap.basePFN && start < memMap.endPFN ? memMap.sectionEnd(start) : start &+ 1
      var k = 1
      while i &+ k < n && pfns[i &+ k].value == start &+ k && start &+ k < secEnd { k &+= 1 }
      freeContigCommon(start, k, frozen: false, "freePagesBulk")
      i &+= k
    }
  }

  /// `__free_contig_range_common()`.
  @usableFromInline
  func freeContigCommon(_ pfn: Int, _ n: Int, frozen: Bool, _ op: String) {
    var p = pfn
    let end = pfn &+ n
    if frozen, memMap.record(p) != nil, let blk = markTailTouched(p) {
      // A frozen page has no reference to underflow: a range starting inside a free block
      // is found by its head. (A free block starting inside the range is caught per page.)
      // A range starting at a tail of an allocated block marks that block, whose free
      // then reads its tails. (One that crosses a non-compound block's head frees the head
      // as an order-0 page: the block is gone. A compound head it crosses is quarantined.)
      reportInsideFreeBlock(p, blk.head, op)
      p = min(blk.head &+ (1 &<< blk.order), end)
    }
    while p < end {
      guard let zi = resolve(p, op)?.zone else {
        p = skipAbsent(p, end)
        continue
      }
      let z = zones + zi
      let segEnd = min(end, memMap.sectionEnd(p), z.pointee.end)
      // Two calls with literal arguments: each inlined copy of freeSegment folds its
      // `frozen` tests away, so the per-page loop carries no branch on it.
      if frozen {
        freeSegment(p, segEnd, zi, frozen: true, op)
      } else {
        freeSegment(p, segEnd, zi, frozen: false, op)
      }
      p = segEnd
    }
  }

  /// The next pfn at or after `p` (below `end`) with a record in a zone.
  func skipAbsent(_ p: Int, _ end: Int) -> Int {
    var q = p &+ 1
    while q < end && (memMap.record(q) == nil || zoneIndex(q) == nil) {
      if memMap.record(q) == nil && q >= memMap.basePFN && q < memMap.endPFN {
        q = memMap.sectionEnd(q)
      } else {
        q &+= 1
      }
    }
    return min(q, end)
  }

  /// The per-page loop over one section-and-zone segment: records are contiguous here.
  @inlinable @inline(__always)
  func freeSegment(_ start: Int, _ segEnd: Int, _ zi: Int, frozen: Bool, _ op: String) {
    var r = memMap.presentRecord(start)
    var q = start
    var runStart = -1
    let slow = tracing.load(ordering: .relaxed)
    var recheck = false
    while q < segEnd {
      if frozen && _slowPath(recheck) {
        // Freeing the run just closed may have merged it with free blocks ahead (a hostile
        // frozen range over free memory): pages in those blocks look frozen (refcount 0,
        // no flags), so look them up once here.
        recheck = false
        if let blk = freeBlockContaining(q) {
          reportInsideFreeBlock(q, blk.head, op)
          let next = min(blk.head &+ (1 &<< blk.order), segEnd)
          r += next &- q
          q = next
          continue
        }
      }
      var ok: Bool
      if frozen {
        ok = r.pointee.refcount.load(ordering: .relaxed) == 0
        if _slowPath(!ok) {
          // free_pages_prepare() traces before it finds the reference.
          tracePageFree(q, 0)
          reportNonzeroRefcount(q, op)
        }
      } else {
        let old = r.pointee.refcount.wrappingSubtract(1, ordering: .acquiringAndReleasing).oldValue
        ok = old == 1
        if _slowPath(old <= 0) { refcountUnderflow(q, r, op) }
      }
      var skip = 1
      if _fastPath(ok) {
        let w = r.pointee.flags.load(ordering: .relaxed)
        if _slowPath(w != 0 || slow) {
          if frozen && w & PG.freeMask != 0 {
            // A free block starting inside a frozen range: the pages behind its head have
            // refcount 0 like frozen pages, so the whole block is skipped, not only the
            // (reported) head, or they would be freed a second time.
            skip = min(1 &<< PG.order(w), segEnd &- q)
          }
          // free_pages_prepare(page, 0): mm_page_free first, then the checks.
          tracePageFree(q, 0)
          ok = preparePageSlow(r, q, w, op)
        }
      }
      if ok {
        if runStart < 0 { runStart = q }
      } else if runStart >= 0 {
        freePreparedRange(runStart, q &- runStart, zi)
        runStart = -1
        recheck = frozen
      }
      q &+= skip
      r += skip
    }
    if runStart >= 0 { freePreparedRange(runStart, segEnd &- runStart, zi) }
  }

  /// `free_prepared_contig_range()`: the greedy decomposition of a prepared run. The
  /// debug steps run once for the whole run: one stack capture, one protection change.
  @inlinable @inline(__always)
  func freePreparedRange(_ pfn: Int, _ n: Int, _ zi: Int) {
    if _slowPath(debugging) { debugFreeHook(pfn, n) }
    var p = pfn
    var left = n
    while left > 0 {
      let order = PageAllocator.chunkOrder(p, left)
      traceChunk(p, order)
      freePrepared(p, order, zi)
      p &+= 1 &<< order
      left &-= 1 &<< order
    }
  }

  /// The decomposition ``freeContigRange(_:count:)`` uses, as (pfn, order) chunks: for
  /// tests and for teaching.
  public static func chunks(of range: Range<PFN>) -> [(pfn: PFN, order: Int)] {
    var out: [(PFN, Int)] = []
    var p = range.lowerBound.value
    var left = range.count
    while left > 0 {
      let o = chunkOrder(p, left)
      out.append((PFN(p), o))
      p += 1 << o
      left -= 1 << o
    }
    return out
  }
}

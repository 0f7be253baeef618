import Glibc
import Synchronization

// Freeing one block and the checks before it: `__free_pages()`, `free_frozen_pages()`,
// `free_pages_prepare()` with `free_page_is_bad()` and `bad_page()`'s reasons, and the
// salvage of a block holding a bad page (the kernel leaks such a block).

extension PageAllocator {
  // MARK: - free_pages / free_frozen_pages

  /// `__free_pages()`: drops the head's reference and frees the block when it was the
  /// last. When the head is still referenced (a speculative `getPage`) and the block is not
  /// compound, the tail halves are freed at once (orders `order-1` down to 0) and the head
  /// is freed later, as an order-0 page, by the last ``putPage(_:)``: the case
  /// lib/test_free_pages.c tests.
  ///
  /// - Complexity: O(1) records touched for a non-compound block, whatever its order
  ///   (the head's only); O(2^order) for a compound page (each tail once), with
  ///   ``Configuration/checkPages`` or page poisoning, and for a block one of whose tails
  ///   a call reached on its own (flags set on it, freed or quarantined through its pfn).
  public func freePages(_ pfn: PFN, order: Int) {
    let p = pfn.value
    guard let (r, zi) = resolve(p, "freePages") else { return }
    let w = r.pointee.flags.load(ordering: .relaxed)
    if _slowPath(w & (PG.freeMask | PG.tail | PG.quarantined) != 0 || PG.order(w) != order) {
      classifyBadFree(p, w, .head(order: order), "freePages")
      return
    }
    let old = r.pointee.refcount.wrappingSubtract(1, ordering: .acquiringAndReleasing).oldValue
    if _fastPath(old == 1) {
      if _fastPath(order == 0) {
        freeOrder0Checked(r, p, zi, "freePages")
      } else {
        freeBlockChecked(p, order, zi, "freePages")
      }
      return
    }
    if old <= 0 {
      refcountUnderflow(p, r, "freePages")
      return
    }
    if w & PG.head == 0 && order > 0 {
      // The head stays (order 0 from now on); the tail halves go now, each looked at
      // whole if a tail of the block was touched on its own.
      r.pointee.flags.store(w & PG.flagMask & ~PG.tailsTouched, ordering: .relaxed)
      let touched = w & PG.tailsTouched != 0
      var k = order &- 1
      while k >= 0 {
        freeBlockChecked(p &+ (1 &<< k), k, zi, "freePages", tailsTouched: touched)
        k &-= 1
      }
    }
  }

  /// `free_frozen_pages()`: frees a block whose refcount the caller already owns at zero.
  public func freeFrozenPages(_ pfn: PFN, order: Int) {
    let p = pfn.value
    guard let (r, zi) = resolve(p, "freeFrozenPages") else { return }
    let w = r.pointee.flags.load(ordering: .relaxed)
    if _slowPath(w & (PG.freeMask | PG.tail | PG.quarantined) != 0 || PG.order(w) != order) {
      classifyBadFree(p, w, .head(order: order), "freeFrozenPages")
      return
    }
    // One walk finds both a free block around the page (freed already) and an allocated
    // block it is a tail of (marked: its owner's free must look at its tails).
    if let blk = markTailTouched(p) {
      reportInsideFreeBlock(p, blk.head, "freeFrozenPages")
      return
    }
    if r.pointee.refcount.load(ordering: .relaxed) != 0 {
      reportNonzeroRefcount(p, "freeFrozenPages")
      return
    }
    freeBlockChecked(p, order, zi, "freeFrozenPages")
  }

  /// Handles a reference dropped from a zero refcount: the count is restored and the free
  /// classified and reported; a page in use (not free) is quarantined.
  @usableFromInline @inline(never)
  func refcountUnderflow(_ pfn: Int, _ r: UnsafeMutablePointer<PageRecord>, _ op: String) {
    r.pointee.refcount.wrappingAdd(1, ordering: .relaxed)
    // A tail of an allocated block is about to be quarantined: its block must know.
    markTailTouched(pfn)
    classifyBadFree(pfn, r.pointee.flags.load(ordering: .relaxed), .refcountUnderflow, op)
  }

  /// `free_pages_prepare()` + `__free_frozen_pages()` for a block whose head refcount is
  /// zero: see ``prepareBlock(_:_:_:_:tailsTouched:)``; a clean block is freed whole.
  @discardableResult
  @usableFromInline
  func freeBlockChecked(_ pfn: Int, _ order: Int, _ zi: Int, _ op: String, tailsTouched touched: Bool = false) -> Bool {
    if _fastPath(order == 0) { return freeOrder0Checked(memMap.presentRecord(pfn), pfn, zi, op) }
    guard prepareBlock(pfn, order, zi, op, tailsTouched: touched) else { return false }
    freePrepared(pfn, order, zi)
    return true
  }

  /// `__free_pages_prepare()` for a block whose head refcount is zero. mm_page_free is
  /// traced first, before any check, as the kernel does. The head is always checked
  /// (`free_page_is_bad()`, hwpoison, free already, a tail, quarantined); a mlocked head is
  /// cleared, counted (UNEVICTABLE_PGCLEARED) and freed like any other. The tails are read
  /// only when they can differ from the state the allocation left them in: in a block
  /// marked ``PG/tailsTouched`` (or, with `tailsTouched`, the tail halves of such a block),
  /// and in every block when ``checksPages``; then one pass checks and clears each.
  /// Otherwise a non-compound block's free touches the head's record only, O(1), and a
  /// compound page's clears its tails without reading them, as `free_tail_page_prepare()`
  /// does with the checks off.
  ///
  /// Returns true when the block is clean and ready for `__free_frozen_pages()`. Otherwise
  /// the block has been dealt with here: the kernel leaks a whole block when one page is
  /// bad; PageAlloc quarantines the bad pages only and frees the rest as order-0 runs (not
  /// traced again: the block's event covers them).
  @usableFromInline @inline(__always)
  func prepareBlock(_ pfn: Int, _ order: Int, _ zi: Int, _ op: String, tailsTouched touched: Bool = false) -> Bool {
    let r = memMap.presentRecord(pfn)
    if order == 0 { return prepareOrder0(r, pfn, op) }
    tracePageFree(pfn, order)
    let w = r.pointee.flags.load(ordering: .relaxed)
    let headOK =
      w & (PG.checkAtFree | PG.freeMask | PG.tail | PG.hwpoison | PG.quarantined) == 0
      && r.pointee.refcount.load(ordering: .relaxed) == 0
    // The debugging options that fill or protect pages (poisoning, init_on_free,
    // debug_pagealloc) turn checksPages on; page_owner alone does not, as in the kernel.
    if _fastPath(headOK && !checksPages && !touched && w & PG.tailsTouched == 0) {
      if _slowPath(w & PG.head != 0) { clearCompoundTails(r, order) }
      r.pointee.flags.store(0, ordering: .relaxed)
      if _slowPath(w & PG.mlocked != 0) { countMlockCleared(w, order) }
      if _slowPath(debugging) { debugFreeHook(pfn, 1 &<< order) }
      return true
    }
    return prepareBlockTails(r, pfn, order, zi, op, w, headOK)
  }

  /// UNEVICTABLE_PGCLEARED for a mlocked block being freed: a folio counts all its pages,
  /// a non-compound block is one page to the kernel's `folio_nr_pages()`.
  @usableFromInline @inline(never)
  func countMlockCleared(_ w: UInt32, _ order: Int) {
    mlockCleared.wrappingAdd(w & PG.head != 0 ? 1 &<< order : 1, ordering: .relaxed)
  }

  /// `free_tail_page_prepare()` with the checks off, for a compound page no call reached
  /// through a tail: each tail record back to the clean state of a free page, written
  /// without being read (the tails hold the tail mark and nothing else, refcount 0). One
  /// `memset` of the records: the links of a page on no list are never read.
  @usableFromInline @inline(never)
  func clearCompoundTails(_ r: UnsafeMutablePointer<PageRecord>, _ order: Int) {
    memset(UnsafeMutableRawPointer(r + 1), 0, ((1 &<< order) &- 1) &* MemoryLayout<PageRecord>.stride)
  }

  /// The tail pass of ``prepareBlock(_:_:_:_:tailsTouched:)``: each tail is checked and
  /// cleared in the same pass, and the block prepared whole when all are good; at the first
  /// bad one the block is salvaged (``salvageBlock(_:_:_:_:_:compound:)``), which sees the
  /// tails cleared so far as clean pages.
  ///
  /// Without ``checksPages``, the flags a caller may set on a tail (PAGE_FLAGS_CHECK_AT_FREE)
  /// are cleared without a report, as the kernel's free clears PAGE_FLAGS_CHECK_AT_PREP on
  /// every tail when its checks are off; a tail that is free, quarantined, hardware
  /// poisoned or referenced is bad in either setting, since freeing it would corrupt a
  /// free list or hand out a page the allocator must keep.
  @usableFromInline @inline(never)
  func prepareBlockTails(
    _ r: UnsafeMutablePointer<PageRecord>, _ pfn: Int, _ order: Int, _ zi: Int, _ op: String, _ w: UInt32,
    _ headOK: Bool
  ) -> Bool {
    let compound = w & PG.head != 0
    if headOK {
      let expected: UInt32 = compound ? PG.tail : 0
      let cleared: UInt32 = checksPages ? 0 : PG.checkAtFree
      var t = r + 1
      let end = r + (1 &<< order)
      var good = true
      while t < end {
        let tw = t.pointee.flags.load(ordering: .relaxed)
        if _slowPath(t.pointee.refcount.load(ordering: .relaxed) != 0) {
          good = false
          break
        }
        if _fastPath(tw == expected) {
          if compound { t.pointee.flags.store(0, ordering: .relaxed) }
        } else if tw & ~cleared == expected {
          t.pointee.flags.store(0, ordering: .relaxed)
        } else {
          good = false
          break
        }
        t += 1
      }
      if _fastPath(good) {
        r.pointee.flags.store(0, ordering: .relaxed)
        if _slowPath(w & PG.mlocked != 0) { countMlockCleared(w, order) }
        if _slowPath(debugging) { debugFreeHook(pfn, 1 &<< order) }
        return true
      }
    }
    salvageBlock(r, pfn, order, zi, op, compound: compound)
    return false
  }

  /// Frees a block holding a bad page: each bad page is reported and quarantined, the good
  /// ones are freed as prepared order-0 runs. (The kernel leaks the whole block.)
  @usableFromInline @inline(never)
  func salvageBlock(
    _ r: UnsafeMutablePointer<PageRecord>, _ pfn: Int, _ order: Int, _ zi: Int, _ op: String, compound: Bool
  ) {
    let n = 1 &<< order
    var runStart = -1
    var j = 0
    while j < n {
      let q = pfn + j
      let qr = r + j
      var qw = qr.pointee.flags.load(ordering: .relaxed)
      var skip = 1
      var ok = true
      if qw & PG.freeMask != 0 {
        // A free block inside this one (its pages were freed behind the owner's back, by a
        // hostile frozen range): it belongs to the free lists now. Its record is left as it
        // is (rewriting it would lose the free block's order), its head is reported once,
        // and its pages are skipped, so none of them is freed a second time.
        _ = classifyBadFree(q, qw, .prepare, op)
        skip = min(1 &<< PG.order(qw), n &- j)
        ok = false
        qw = 0
      }
      if compound { qw &= ~(PG.head | PG.tail) }
      if j == 0 { qw &= PG.flagMask & ~PG.tailsTouched }
      if !ok {
        // Reported above.
      } else if qr.pointee.refcount.load(ordering: .relaxed) != 0 {
        reportNonzeroRefcount(q, op)
        ok = false
      } else if qw != 0 && j != 0 && !checksPages && qw & ~PG.checkAtFree == 0 {
        // A tail's flags, cleared without a look when the checks are off.
        qr.pointee.flags.store(0, ordering: .relaxed)
      } else if qw != 0 {
        qr.pointee.flags.store(qw, ordering: .relaxed)
        ok = preparePageSlow(qr, q, qw, op)
      } else if let blk = freeBlockContaining(q) {
        // Freed already (a hostile frozen range over this block): a clean-looking page
        // inside a free block must not be freed twice.
        reportInsideFreeBlock(q, blk.head, op)
        ok = false
      } else {
        qr.pointee.flags.store(0, ordering: .relaxed)
      }
      if ok {
        if runStart < 0 { runStart = q }
      } else if runStart >= 0 {
        freePreparedRange(runStart, q - runStart, zi)
        runStart = -1
      }
      j &+= skip
    }
    if runStart >= 0 { freePreparedRange(runStart, pfn + n - runStart, zi) }
  }

  /// ``freeBlockChecked(_:_:_:_:tailsTouched:)`` for order 0, inlined into the order-0 free paths.
  @discardableResult
  @inlinable @inline(__always)
  func freeOrder0Checked(_ r: UnsafeMutablePointer<PageRecord>, _ pfn: Int, _ zi: Int, _ op: String) -> Bool {
    guard prepareOrder0(r, pfn, op) else { return false }
    freePrepared(pfn, 0, zi)
    return true
  }

  /// ``prepareBlock(_:_:_:_:tailsTouched:)`` for order 0: mm_page_free, then the checks, then
  /// the debug steps. Returns true when the page may be freed (its flag word is then clear).
  @inlinable @inline(__always)
  func prepareOrder0(_ r: UnsafeMutablePointer<PageRecord>, _ pfn: Int, _ op: String) -> Bool {
    tracePageFree(pfn, 0)
    let w = r.pointee.flags.load(ordering: .relaxed)
    if _fastPath(w & PG.flagMask == 0) {
      if _slowPath(r.pointee.refcount.load(ordering: .relaxed) != 0) {
        reportNonzeroRefcount(pfn, op)
        return false
      }
      if w != 0 { r.pointee.flags.store(0, ordering: .relaxed) }
      if _slowPath(debugging) { debugFreeHook(pfn, 1) }
      return true
    }
    return prepareOrder0Slow(r, pfn, w, op)
  }

  @usableFromInline @inline(never)
  func prepareOrder0Slow(_ r: UnsafeMutablePointer<PageRecord>, _ pfn: Int, _ w: UInt32, _ op: String) -> Bool {
    if w & PG.head != 0 {
      // A compound page that somehow lost its order (cannot happen for order 0).
      reportBad(pfn, .compound, "compound page freed at order 0", op, quarantine: true)
      return false
    }
    guard preparePageSlow(r, pfn, w, op) else { return false }
    if debugging { debugFreeHook(pfn, 1) }
    return true
  }

  /// The slow part of the order-0 prepare, after mm_page_free (the callers trace): a page
  /// with flags set (or any page while tracing is on). A mlocked page is cleared and counted
  /// (UNEVICTABLE_PGCLEARED) first, as `__free_pages_prepare()` does; any other flag is
  /// checked. Returns true when the page may be freed (its flag word is then clear). The
  /// debug steps (poisoning, page_owner, protection) are the caller's, once per block or
  /// run (``debugFreeHook(_:_:)``).
  @usableFromInline @inline(never)
  func preparePageSlow(_ r: UnsafeMutablePointer<PageRecord>, _ pfn: Int, _ wIn: UInt32, _ op: String) -> Bool {
    var w = wIn
    if w & PG.mlocked != 0 && w & (PG.freeMask | PG.quarantined) == 0 {
      mlockCleared.wrappingAdd(1, ordering: .relaxed)
      w &= ~PG.mlocked
      r.pointee.flags.store(w, ordering: .relaxed)
    }
    if w & PG.flagMask & ~PG.tailsTouched == 0 {
      // Only an order left in the word (and maybe the tails-touched mark): an unsplit
      // non-compound head freed page by page, its tails to be looked at one by one.
      r.pointee.flags.store(0, ordering: .relaxed)
    } else if !classifyBadFree(pfn, w, .prepare, op) {
      return false
    }
    return true
  }

  // MARK: - Bad frees

  /// What a free path saw that sent a page to ``classifyBadFree(_:_:_:_:)``.
  @usableFromInline
  enum BadFreeCheck {
    /// `freePages`/`freeFrozenPages`: the head's flag word does not fit a block allocated
    /// at `order` (free, a tail, quarantined, or another order).
    case head(order: Int)
    /// A reference was dropped from a page whose `_refcount` was zero already (and has
    /// been restored).
    case refcountUnderflow
    /// `free_pages_prepare()` of an order-0 page found flags set.
    case prepare
  }

  /// The bad-free classifier behind every free path: says what is wrong with freeing
  /// `pfn` (flag word `w`, as the caller read it), reports it as a call of `op`, and
  /// quarantines a page whose state makes it unsafe to hand out again.
  ///
  /// The flag tests come first and in the same order for every check: a free block's
  /// head (free already), then a quarantined page (out of use for good); the lookup of a
  /// free block around the page walks the orders, so it comes after them. A quarantined
  /// page never lies inside a free block, so that order loses nothing. Returns true only
  /// for a `.prepare` page whose flags forbid nothing: it may be freed.
  @discardableResult
  @usableFromInline @inline(never)
  func classifyBadFree(_ pfn: Int, _ w: UInt32, _ check: BadFreeCheck, _ op: String) -> Bool {
    let f = w & PG.flagMask
    if f & PG.freeMask != 0 {
      reportBad(pfn, .doubleFree, "nonzero mapcount", op, quarantine: false)
      return false
    }
    if f & PG.quarantined != 0 {
      reportBad(pfn, .quarantined, "page is quarantined", op, quarantine: false)
      return false
    }
    switch check {
    case .head(let order):
      if f & PG.tail != 0 {
        reportBad(pfn, .compound, "freeing a tail page", op, quarantine: false)
      } else if let blk = freeBlockContaining(pfn) {
        reportInsideFreeBlock(pfn, blk.head, op)
      } else {
        reportBad(
          pfn, .wrongOrder, "freed at order \(order), allocated at order \(PG.order(w))", op, quarantine: false)
      }
      return false
    case .refcountUnderflow:
      if freeBlockContaining(pfn) != nil {
        reportBad(pfn, .doubleFree, "page is inside a free block", op, quarantine: false)
      } else {
        reportBad(pfn, .refcountUnderflow, "page_ref underflow: _refcount was 0", op, quarantine: true)
      }
      return false
    case .prepare:
      if f & (PG.head | PG.tail) != 0 {
        reportBad(pfn, .compound, "compound page freed as an order-0 page", op, quarantine: true)
        return false
      }
      if f & PG.checkAtFree != 0 {
        reportBad(pfn, .badState, "PAGE_FLAGS_CHECK_AT_FREE flag(s) set", op, quarantine: true)
        return false
      }
      if f & PG.hwpoison != 0 {
        // An order-0 HWPoison page is kept off the free lists for good, without a report.
        memMap.presentRecord(pfn).pointee.flags.store(PG.hwpoison | PG.quarantined, ordering: .relaxed)
        hwpoisoned.wrappingAdd(1, ordering: .relaxed)
        quarantined.wrappingAdd(1, ordering: .relaxed)
        return false
      }
      return true
    }
  }

  /// Reports a free of a page that lies inside the free block at `head`: freed already.
  @usableFromInline @inline(never)
  func reportInsideFreeBlock(_ pfn: Int, _ head: Int, _ op: String) {
    reportBad(pfn, .doubleFree, "page is inside a free block at \(PFN(head))", op, quarantine: false)
  }

  /// Reports and quarantines a page freed while something still holds a reference to it.
  @usableFromInline @inline(never)
  func reportNonzeroRefcount(_ pfn: Int, _ op: String) {
    reportBad(pfn, .nonzeroRefcount, "nonzero _refcount", op, quarantine: true)
  }
}

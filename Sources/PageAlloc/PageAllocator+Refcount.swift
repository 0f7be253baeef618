import Synchronization

// Page references and page state: `page_ref_count()`, `get_page()`, `put_page()`,
// `compound_head()` and `split_page()`, plus the flag accessors that let a caller model a
// page in a bad state.

extension PageAllocator {
  // MARK: - Refcounts

  /// The page's `_refcount` (0 for a free or frozen page).
  public func refcount(of pfn: PFN) -> Int32 {
    guard let r = memMap.record(pfn.value) else { return 0 }
    return r.pointee.refcount.load(ordering: .relaxed)
  }

  /// `get_page()`: takes a reference on the page (on the head of a compound page).
  /// A page with no reference (free or frozen) is reported and left alone.
  public func getPage(_ pfn: PFN) {
    guard resolve(pfn.value, "getPage") != nil else { return }
    let head = compoundHead(pfn.value)
    let r = memMap.presentRecord(head)
    let old = r.pointee.refcount.wrappingAdd(1, ordering: .relaxed).oldValue
    if old <= 0 {
      r.pointee.refcount.wrappingSubtract(1, ordering: .relaxed)
      reportBad(head, .getOnFreePage, "get_page on a page with zero _refcount", "getPage", quarantine: false)
    }
  }

  /// `put_page()`: drops a reference; frees the page (the whole compound page, or the
  /// block of a non-compound head not yet split) when it was the last. Returns whether the
  /// page was freed.
  ///
  /// The kernel would free only the head of a non-compound order > 0 page here; PageAlloc
  /// knows the allocation order and frees the block.
  @discardableResult
  public func putPage(_ pfn: PFN) -> Bool {
    guard let zi = resolve(pfn.value, "putPage")?.zone else { return false }
    let head = compoundHead(pfn.value)
    let r = memMap.presentRecord(head)
    let old = r.pointee.refcount.wrappingSubtract(1, ordering: .acquiringAndReleasing).oldValue
    if _fastPath(old > 1) { return false }
    if _slowPath(old <= 0) {
      refcountUnderflow(head, r, "putPage")
      return false
    }
    let order = PG.order(r.pointee.flags.load(ordering: .relaxed))
    return freeBlockChecked(head, order, zi, "putPage")
  }

  /// The head of the compound page containing `pfn` (or `pfn` itself).
  @inlinable
  func compoundHead(_ pfn: Int) -> Int {
    let w = memMap.presentRecord(pfn).pointee.flags.load(ordering: .relaxed)
    if _fastPath(w & PG.tail == 0) { return pfn }
    var o = 1
    while o <= PageGeometry.maxOrder {
      let h = pfn & ~((1 &<< o) &- 1)
      if let hr = memMap.record(h) {
        let hw = hr.pointee.flags.load(ordering: .relaxed)
        if hw & PG.head != 0 && PG.order(hw) >= o { return h }
      }
      o &+= 1
    }
    return pfn
  }

  /// `set_page_flags`-style test hook: sets flags on a page the caller owns, to model a
  /// page in a bad state (`.locked`, `.reserved`...) or a hardware-poisoned one.
  /// A free page (a free block's head or a page inside one) belongs to the allocator and
  /// is left alone: flags there would corrupt the free lists.
  ///
  /// Flags on a tail of a block are seen when the block is freed (the call marks the
  /// block): reported, and the page quarantined, with ``Configuration/checkPages``;
  /// cleared without a report otherwise, as the kernel's free clears them when its checks
  /// are off. A hardware-poisoned page is kept out of use either way.
  public func setPageFlags(_ pfn: PFN, _ flags: PageFlags) {
    guard let r = memMap.record(pfn.value) else { return }
    if r.pointee.flags.load(ordering: .relaxed) & PG.freeMask != 0 || markTailTouched(pfn.value) != nil { return }
    r.pointee.flags.bitwiseOr(flags.intersection(.settable).rawValue, ordering: .relaxed)
  }

  /// Clears caller-settable flags.
  public func clearPageFlags(_ pfn: PFN, _ flags: PageFlags) {
    guard let r = memMap.record(pfn.value) else { return }
    r.pointee.flags.bitwiseAnd(~flags.intersection(.settable).rawValue, ordering: .relaxed)
  }

  /// The settable flags of a page.
  public func pageFlags(of pfn: PFN) -> PageFlags {
    guard let r = memMap.record(pfn.value) else { return [] }
    return PageFlags(rawValue: r.pointee.flags.load(ordering: .relaxed)).intersection(.settable)
  }

  /// Whether the page is quarantined.
  public func isQuarantined(_ pfn: PFN) -> Bool {
    guard let r = memMap.record(pfn.value) else { return false }
    return r.pointee.flags.load(ordering: .relaxed) & PG.quarantined != 0
  }

  // MARK: - split_page

  /// `split_page()`: turns a non-compound order-`order` block into `2^order` order-0 pages,
  /// each with refcount 1 (the head keeps its references).
  public func splitPage(_ pfn: PFN, order: Int) {
    guard let r = resolve(pfn.value, "splitPage")?.record else { return }
    let w = r.pointee.flags.load(ordering: .relaxed)
    if w & (PG.head | PG.tail) != 0 {
      reportBad(pfn.value, .compound, "split_page of a compound page", "splitPage", quarantine: false)
      return
    }
    if w & PG.freeMask != 0 || r.pointee.refcount.load(ordering: .relaxed) <= 0 {
      reportBad(pfn.value, .getOnFreePage, "split_page of a page with zero _refcount", "splitPage", quarantine: false)
      return
    }
    if PG.order(w) != order {
      reportBad(
        pfn.value, .wrongOrder, "split_page order \(order) of an order-\(PG.order(w)) block", "splitPage",
        quarantine: false)
      return
    }
    // The head becomes an order-0 page; each tail is judged on its own when it is freed.
    r.pointee.flags.store(w & PG.flagMask & ~PG.tailsTouched, ordering: .relaxed)
    // A block never crosses a section, so its records are contiguous.
    var t = r + 1
    let end = r + (1 &<< order)
    // One test per tail for both cases below: a free block's head, or the head (or a
    // tail) of a block allocated again, carries an order, a list flag or a compound flag.
    let foreign = PG.freeMask | PG.head | PG.tail | (0xFF &<< PG.orderShift)
    while t < end {
      let tw = t.pointee.flags.load(ordering: .relaxed)
      if _slowPath(tw & foreign != 0) {
        let q = pfn.value &+ (t - r)
        if tw & PG.freeMask != 0 {
          // A tail freed behind the owner's back (a frozen free of a refcount-0 tail): it
          // is a free block now and keeps refcount 0; its pages are skipped.
          reportBad(q, .doubleFree, "split_page of a block with a free page", "splitPage", quarantine: false)
        } else {
          // A block allocated again inside this one, after pages of it were freed behind
          // the owner's back: it is its new owner's. Referencing its tails would make them
          // look like this split's order-0 pages, free to be freed under a block whose
          // free does not read them.
          reportBad(
            q, .doubleFree, "split_page of a block with a page allocated again", "splitPage", quarantine: false)
        }
        t += min(1 &<< PG.order(tw), end - t)
        continue
      }
      t.pointee.refcount.store(1, ordering: .relaxed)
      t += 1
    }
    if _slowPath(debugging) { debugSplitHook(pfn.value, order) }
  }
}

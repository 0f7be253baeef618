import Synchronization

// What makes a free of a block touch no tail record it need not, as the kernel's without
// CONFIG_DEBUG_VM, and the allocation-side check with it (`check_new_pages()`).
//
// The kernel's free of an order > 0 block clears the PAGE_FLAGS_CHECK_AT_PREP bits of every
// tail even with its checks off (`__free_pages_prepare()`), because a tail may carry flags;
// a compound page's tails are cleared by `free_tail_page_prepare()`, unchecked. Here a tail
// record of an allocated block is exactly as the allocation left it (no flags, refcount 0;
// the tail mark for a compound page: the tails of a free block are clean, which `verify()`
// checks) unless a call changed that one page on its own: flags set on it, or a free or a
// bad-free quarantine through the tail's pfn. Every such call marks the block's head
// (``PG/tailsTouched``), so a free that finds the mark clear knows every tail without
// reading one (a non-compound block's free touches the head only; a compound page's writes
// its tails back to clean), and a free that finds it set reads every tail: then the pages
// freed or quarantined behind the owner's back are found, and never freed a second time,
// in either setting of ``Configuration/checkPages``.

extension PageAllocator {
  /// The innermost block around `pfn`: a free block (buddy or pcp) holding it, or an
  /// allocated block, compound or not, of which it is a tail (`free == false`, the head
  /// below `pfn`). Nil when neither: `pfn` heads its own block or is an order-0 page. The
  /// walk over the orders of `freeBlockContaining` (find_large_buddy), doing both look-ups
  /// at once; lock-free reads, exact for pages the caller owns.
  @inlinable
  func enclosingBlock(_ pfn: Int) -> (head: Int, order: Int, free: Bool)? {
    var o = 0
    while o <= PageGeometry.maxOrder {
      let h = pfn & ~((1 &<< o) &- 1)
      if let r = memMap.record(h) {
        let w = r.pointee.flags.load(ordering: .relaxed)
        let k = PG.order(w)
        // Aligned blocks nest: a block of order k >= o at h holds pfn.
        if k >= o {
          if w & PG.freeMask != 0 { return (h, k, true) }
          // An order in a record that is not free: only the head of an allocated block
          // (compound or not) carries one.
          if h != pfn && w & (PG.tail | PG.quarantined) == 0 { return (h, k, false) }
        }
      }
      o &+= 1
    }
    return nil
  }

  /// Marks the allocated block that has `pfn` as a tail, if any: a call is about to change
  /// that tail on its own (PG.tailsTouched). Returns the free block around `pfn` instead
  /// when it lies in one (nothing is marked then).
  @usableFromInline @discardableResult
  func markTailTouched(_ pfn: Int) -> (head: Int, order: Int)? {
    guard let b = enclosingBlock(pfn) else { return nil }
    if b.free { return (b.head, b.order) }
    memMap.presentRecord(b.head).pointee.flags.bitwiseOr(PG.tailsTouched, ordering: .relaxed)
    return nil
  }

  // MARK: - check_new_pages

  /// `check_new_pages()` (only when ``checksPages``): every page of the block just taken
  /// off a free list must be as a free page is (no flags but the order on the head,
  /// refcount 0). Free pages belong to the allocator, so only a bug can break this.
  /// Returns true when the block may be handed out. Otherwise each bad page is reported
  /// (the kernel reports the first and leaks the block) and quarantined, the good pages go
  /// back to the free lists, and the caller takes another block.
  @usableFromInline @inline(never)
  func checkNewPages(_ pfn: Int, _ order: Int, _ zi: Int) -> Bool {
    let r = memMap.presentRecord(pfn)
    let n = 1 &<< order
    var i = 0
    while i < n {
      let t = r + i
      let expected = i == 0 ? PG.word(flags: 0, order: order) : 0
      if t.pointee.flags.load(ordering: .relaxed) != expected || t.pointee.refcount.load(ordering: .relaxed) != 0 {
        break
      }
      i &+= 1
    }
    if _fastPath(i == n) { return true }
    r.pointee.flags.bitwiseAnd(~(0xFF &<< PG.orderShift), ordering: .relaxed)
    var runStart = -1
    for j in 0..<n {
      let q = pfn &+ j
      let t = r + j
      let w = t.pointee.flags.load(ordering: .relaxed)
      let rc = t.pointee.refcount.load(ordering: .relaxed)
      let ok = w == 0 && rc == 0
      if !ok {
        if w & PG.hwpoison != 0 && w & (PG.freeMask | PG.quarantined) == 0 {
          // check_new_page(): a hardware-poisoned page is dropped without a report.
          t.pointee.flags.store(PG.hwpoison | PG.quarantined, ordering: .relaxed)
          hwpoisoned.wrappingAdd(1, ordering: .relaxed)
          quarantined.wrappingAdd(1, ordering: .relaxed)
        } else {
          // page_bad_reason() with the PREP mask: the last matching condition names it.
          let reason = w != 0 ? "PAGE_FLAGS_CHECK_AT_PREP flag(s) set" : "nonzero _refcount"
          reportBad(q, .badState, reason, "alloc", quarantine: true)
        }
      }
      if ok {
        if runStart < 0 { runStart = q }
      } else if runStart >= 0 {
        freePreparedRange(runStart, q &- runStart, zi)
        runStart = -1
      }
    }
    if runStart >= 0 { freePreparedRange(runStart, pfn &+ n &- runStart, zi) }
    return false
  }

  /// ``rmqueueTop(_:_:_:_:)`` followed by `check_new_pages()` when ``checksPages``: a
  /// block that fails the check is dropped and another taken, as `rmqueue_buddy()` and
  /// `__rmqueue_pcplist()` retry.
  @inlinable @inline(__always)
  func rmqueueChecked(
    _ z: UnsafeMutablePointer<Zone>, _ zi: Int, _ order: Int, _ mt: Int, _ flags: AllocFlags
  ) -> Int? {
    guard let p = rmqueueTop(z, zi, order, mt, flags) else { return nil }
    if _slowPath(checksPages) { return recheckNewBlock(z, zi, order, mt, flags, p) }
    return p
  }

  @usableFromInline @inline(never)
  func recheckNewBlock(
    _ z: UnsafeMutablePointer<Zone>, _ zi: Int, _ order: Int, _ mt: Int, _ flags: AllocFlags, _ first: Int
  ) -> Int? {
    var p = first
    while !checkNewPages(p, order, zi) {
      guard let q = rmqueueTop(z, zi, order, mt, flags) else { return nil }
      p = q
    }
    return p
  }
}

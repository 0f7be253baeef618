import Synchronization

// The free side: refcounts, free_pages_prepare()'s checks, and the chunked free of the
// 2026 series.

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
    guard memMap.record(pfn.value) != nil, zoneIndex(pfn.value) != nil else {
      reportBad(pfn.value, .outsideZones, "pfn outside every zone", "getPage", quarantine: false)
      return
    }
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
    guard memMap.record(pfn.value) != nil, let zi = zoneIndex(pfn.value) else {
      reportBad(pfn.value, .outsideZones, "pfn outside every zone", "putPage", quarantine: false)
      return false
    }
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

  /// Handles a reference dropped from a zero refcount: the count is restored and the free
  /// reported; a page in use (not free) is quarantined.
  @usableFromInline @inline(never)
  func refcountUnderflow(_ pfn: Int, _ r: UnsafeMutablePointer<PageRecord>, _ op: String) {
    r.pointee.refcount.wrappingAdd(1, ordering: .relaxed)
    let w = r.pointee.flags.load(ordering: .relaxed)
    if w & PG.freeMask != 0 {
      reportBad(pfn, .doubleFree, "nonzero mapcount", op, quarantine: false)
    } else if freeBlockContaining(pfn) != nil {
      reportBad(pfn, .doubleFree, "page is inside a free block", op, quarantine: false)
    } else if w & PG.quarantined != 0 {
      reportBad(pfn, .quarantined, "page is quarantined", op, quarantine: false)
    } else {
      reportBad(pfn, .refcountUnderflow, "page_ref underflow: _refcount was 0", op, quarantine: true)
    }
  }

  /// `set_page_flags`-style test hook: sets flags on a page the caller owns, to model a
  /// page in a bad state (`.locked`, `.reserved`...) or a hardware-poisoned one.
  /// A free page (a free block's head or a page inside one) belongs to the allocator and
  /// is left alone: flags there would corrupt the free lists.
  public func setPageFlags(_ pfn: PFN, _ flags: PageFlags) {
    guard let r = memMap.record(pfn.value) else { return }
    if r.pointee.flags.load(ordering: .relaxed) & PG.freeMask != 0 || freeBlockContaining(pfn.value) != nil { return }
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
    guard let r = memMap.record(pfn.value), zoneIndex(pfn.value) != nil else {
      reportBad(pfn.value, .outsideZones, "pfn outside every zone", "splitPage", quarantine: false)
      return
    }
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
    r.pointee.flags.store(w & PG.flagMask, ordering: .relaxed)
    // A block never crosses a section, so its records are contiguous.
    var t = r + 1
    let end = r + (1 &<< order)
    while t < end {
      let tw = t.pointee.flags.load(ordering: .relaxed)
      if _slowPath(tw & PG.freeMask != 0) {
        // A tail freed behind the owner's back (a frozen free of a refcount-0 tail): it is
        // a free block now and keeps refcount 0; its pages are skipped.
        let q = pfn.value &+ (t - r)
        reportBad(q, .doubleFree, "split_page of a block with a free page", "splitPage", quarantine: false)
        t += min(1 &<< PG.order(tw), end - t)
        continue
      }
      t.pointee.refcount.store(1, ordering: .relaxed)
      t += 1
    }
  }

  // MARK: - free_pages / free_frozen_pages

  /// `__free_pages()`: drops the head's reference and frees the block when it was the
  /// last. When the head is still referenced (a speculative `getPage`) and the block is not
  /// compound, the tail halves are freed at once (orders `order-1` down to 0) and the head
  /// is freed later, as an order-0 page, by the last ``putPage(_:)``: the case
  /// lib/test_free_pages.c tests.
  public func freePages(_ pfn: PFN, order: Int) {
    let p = pfn.value
    guard let r = memMap.record(p), let zi = zoneIndex(p) else {
      reportBad(p, .outsideZones, "pfn outside every zone", "freePages", quarantine: false)
      return
    }
    let w = r.pointee.flags.load(ordering: .relaxed)
    if _slowPath(w & (PG.freeMask | PG.tail | PG.quarantined) != 0 || PG.order(w) != order) {
      badFreeHead(p, w, order, "freePages")
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
      // The head stays (order 0 from now on); the tail halves go now.
      r.pointee.flags.store(w & PG.flagMask, ordering: .relaxed)
      var k = order &- 1
      while k >= 0 {
        freeBlockChecked(p &+ (1 &<< k), k, zi, "freePages")
        k &-= 1
      }
    }
  }

  /// `free_frozen_pages()`: frees a block whose refcount the caller already owns at zero.
  public func freeFrozenPages(_ pfn: PFN, order: Int) {
    let p = pfn.value
    guard let r = memMap.record(p), let zi = zoneIndex(p) else {
      reportBad(p, .outsideZones, "pfn outside every zone", "freeFrozenPages", quarantine: false)
      return
    }
    let w = r.pointee.flags.load(ordering: .relaxed)
    if _slowPath(w & (PG.freeMask | PG.tail | PG.quarantined) != 0 || PG.order(w) != order) {
      badFreeHead(p, w, order, "freeFrozenPages")
      return
    }
    if let blk = freeBlockContaining(p) {
      reportBad(p, .doubleFree, "page is inside a free block at \(PFN(blk.head))", "freeFrozenPages", quarantine: false)
      return
    }
    if r.pointee.refcount.load(ordering: .relaxed) != 0 {
      reportBad(p, .nonzeroRefcount, "nonzero _refcount", "freeFrozenPages", quarantine: true)
      return
    }
    freeBlockChecked(p, order, zi, "freeFrozenPages")
  }

  /// Classifies a bad head passed to freePages / freeFrozenPages.
  @usableFromInline @inline(never)
  func badFreeHead(_ p: Int, _ w: UInt32, _ order: Int, _ op: String) {
    if w & PG.freeMask != 0 {
      reportBad(p, .doubleFree, "nonzero mapcount", op, quarantine: false)
    } else if w & PG.quarantined != 0 {
      reportBad(p, .quarantined, "page is quarantined", op, quarantine: false)
    } else if w & PG.tail != 0 {
      reportBad(p, .compound, "freeing a tail page", op, quarantine: false)
    } else if let blk = freeBlockContaining(p) {
      reportBad(p, .doubleFree, "page is inside a free block at \(PFN(blk.head))", op, quarantine: false)
    } else {
      reportBad(
        p, .wrongOrder, "freed at order \(order), allocated at order \(PG.order(w))", op, quarantine: false)
    }
  }

  /// `free_pages_prepare()` + `__free_frozen_pages()` for a block whose head refcount is
  /// zero: every page is checked (`free_page_is_bad()`, compound tails, hwpoison); a clean
  /// block is freed whole. The kernel leaks a whole block when one page is bad; PageAlloc
  /// quarantines the bad pages only and frees the rest as order-0 runs.
  @discardableResult
  @usableFromInline
  func freeBlockChecked(_ pfn: Int, _ order: Int, _ zi: Int, _ op: String) -> Bool {
    let r = memMap.presentRecord(pfn)
    if _fastPath(order == 0) { return freeOrder0Checked(r, pfn, zi, op) }
    let w = r.pointee.flags.load(ordering: .relaxed)
    // order > 0: check every page.
    let compound = w & PG.head != 0
    let n = 1 &<< order
    var bad = false
    var i = 0
    var t = r
    while i < n {
      let tw = t.pointee.flags.load(ordering: .relaxed)
      let expected: UInt32 = i == 0 ? (w & ~PG.checkAtFree) : (compound ? PG.tail : 0)
      let okFlags = i == 0 ? (tw & (PG.checkAtFree | PG.freeMask | PG.tail | PG.hwpoison | PG.quarantined) == 0) : tw == expected
      if !okFlags || t.pointee.refcount.load(ordering: .relaxed) != 0 {
        bad = true
        break
      }
      i &+= 1
      t += 1
    }
    if _fastPath(!bad) {
      t = r
      i = 0
      while i < n {
        t.pointee.flags.store(0, ordering: .relaxed)
        i &+= 1
        t += 1
      }
      if _slowPath(poisoning) { fillPoison(pfn, n) }
      tracePageFree(pfn, order)
      freePrepared(pfn, order, zi)
      return true
    }
    // Salvage: quarantine each bad page, free the good ones as prepared order-0 runs.
    var runStart = -1
    for j in 0..<n {
      let q = pfn + j
      let qr = r + j
      var qw = qr.pointee.flags.load(ordering: .relaxed)
      if compound { qw &= ~(PG.head | PG.tail) }
      if j == 0 { qw &= PG.flagMask }
      var ok = true
      if qr.pointee.refcount.load(ordering: .relaxed) != 0 {
        reportBad(q, .nonzeroRefcount, "nonzero _refcount", op, quarantine: true)
        ok = false
      } else if qw != 0 {
        qr.pointee.flags.store(qw, ordering: .relaxed)
        ok = preparePageSlow(qr, q, qw, op)
      } else if let blk = freeBlockContaining(q) {
        // Freed already (a hostile frozen range over this block): a clean-looking page
        // inside a free block must not be freed twice.
        reportBad(q, .doubleFree, "page is inside a free block at \(PFN(blk.head))", op, quarantine: false)
        ok = false
      } else {
        qr.pointee.flags.store(0, ordering: .relaxed)
        if poisoning { fillPoison(q, 1) }
        tracePageFree(q, 0)
      }
      if ok {
        if runStart < 0 { runStart = q }
      } else if runStart >= 0 {
        freePreparedRange(runStart, q - runStart, zi)
        runStart = -1
      }
    }
    if runStart >= 0 { freePreparedRange(runStart, pfn + n - runStart, zi) }
    return false
  }

  /// ``freeBlockChecked(_:_:_:_:)`` for order 0, inlined into the order-0 free paths.
  @discardableResult
  @inlinable @inline(__always)
  func freeOrder0Checked(_ r: UnsafeMutablePointer<PageRecord>, _ pfn: Int, _ zi: Int, _ op: String) -> Bool {
    let w = r.pointee.flags.load(ordering: .relaxed)
    if _fastPath(w & PG.flagMask == 0) {
      if _slowPath(r.pointee.refcount.load(ordering: .relaxed) != 0) {
        reportBad(pfn, .nonzeroRefcount, "nonzero _refcount", op, quarantine: true)
        return false
      }
      if w != 0 { r.pointee.flags.store(0, ordering: .relaxed) }
      if _slowPath(poisoning) { fillPoison(pfn, 1) }
      tracePageFree(pfn, 0)
      freePrepared(pfn, 0, zi)
      return true
    }
    return freeOrder0Slow(r, pfn, w, zi, op)
  }

  @usableFromInline @inline(never)
  func freeOrder0Slow(
    _ r: UnsafeMutablePointer<PageRecord>, _ pfn: Int, _ w: UInt32, _ zi: Int, _ op: String
  ) -> Bool {
    if w & PG.head != 0 {
      // A compound page that somehow lost its order (cannot happen for order 0).
      reportBad(pfn, .compound, "compound page freed at order 0", op, quarantine: true)
      return false
    }
    guard preparePageSlow(r, pfn, w, op) else { return false }
    freePrepared(pfn, 0, zi)
    return true
  }

  /// The slow part of the order-0 prepare: a page with flags set. Returns true when the
  /// page may be freed (its flag word is then clear).
  @usableFromInline @inline(never)
  func preparePageSlow(_ r: UnsafeMutablePointer<PageRecord>, _ pfn: Int, _ w: UInt32, _ op: String) -> Bool {
    let f = w & PG.flagMask
    if f == 0 {
      // Only an order left in the word: an unsplit non-compound head freed page by page.
      r.pointee.flags.store(0, ordering: .relaxed)
    } else if f & PG.freeMask != 0 {
      reportBad(pfn, .doubleFree, "nonzero mapcount", op, quarantine: false)
      return false
    } else if f & PG.quarantined != 0 {
      reportBad(pfn, .quarantined, "page is quarantined", op, quarantine: false)
      return false
    } else if f & (PG.head | PG.tail) != 0 {
      reportBad(pfn, .compound, "compound page freed as an order-0 page", op, quarantine: true)
      return false
    } else if f & PG.checkAtFree != 0 {
      reportBad(pfn, .badState, "PAGE_FLAGS_CHECK_AT_FREE flag(s) set", op, quarantine: true)
      return false
    } else if f & PG.hwpoison != 0 {
      // An order-0 HWPoison page is kept off the free lists for good, without a report.
      r.pointee.flags.store(PG.hwpoison | PG.quarantined, ordering: .relaxed)
      hwpoisoned.wrappingAdd(1, ordering: .relaxed)
      quarantined.wrappingAdd(1, ordering: .relaxed)
      return false
    }
    if poisoning { fillPoison(pfn, 1) }
    tracePageFree(pfn, 0)
    return true
  }

  // MARK: - Per-CPU commit

  /// `__free_frozen_pages(page, order, FPI_PREPARED)`: a prepared block goes to this CPU's
  /// pcp list (pcp orders, pcp types), or straight to the buddy (other orders, isolated
  /// pageblocks, a busy pcp lock). HighAtomic and CMA blocks use the Movable pcp list.
  @inlinable @inline(__always)
  func freePrepared(_ pfn: Int, _ order: Int, _ zi: Int) {
    let z = zones + zi
    if _slowPath(!pcpAllowedOrder(order)) {
      zoneFreeBlock(z, pfn, order)
      return
    }
    var mt = memMap.freeListTypeRaw(pfn)
    if _slowPath(mt >= MigrateType.pcpTypes) {
      if mt == MigrateType.isolate.rawValue {
        zoneFreeBlock(z, pfn, order)
        return
      }
      mt = MigrateType.movable.rawValue
    }
    let pcp = localPcp(zi)
    if _slowPath(!pcp.pointee.lock.tryLock()) {
      zoneFreeBlock(z, pfn, order)
      return
    }
    freeCommit(z, pcp, pfn, mt, order)
    pcp.pointee.lock.unlock()
  }

  /// `free_frozen_page_commit()`: adds the block to the pcp list head and drains the oldest
  /// blocks to the buddy when the pcp reaches `high`.
  @inlinable @inline(__always)
  func freeCommit(
    _ z: UnsafeMutablePointer<Zone>, _ pcp: UnsafeMutablePointer<PerCPUPages>, _ pfn: Int, _ mt: Int,
    _ order: Int
  ) {
    pcp.pointee.allocFactor = pcp.pointee.allocFactor &>> 1
    pcp.pointee.pgfree = pcp.pointee.pgfree &+ (1 &<< order)
    let pindex = orderToPindex(mt, order)
    pcpAddHead(pcp.pointee.lists + pindex, pfn, order)
    pcp.pointee.count = pcp.pointee.count &+ (1 &<< order)
    var freeHigh = false
    if order >= 1 && order <= PageGeometry.costlyOrder {
      // Many high-order frees with no allocation in between: drain harder.
      freeHigh =
        pcp.pointee.freeCount >= pcp.pointee.batch &+ pcp.pointee.highMin / 2
        && pcp.pointee.prevFreeHighOrder
      pcp.pointee.prevFreeHighOrder = true
    } else if pcp.pointee.prevFreeHighOrder {
      pcp.pointee.prevFreeHighOrder = false
    }
    pcp.pointee.freeCount = min(pcp.pointee.freeCount &+ (1 &<< order), pcp.pointee.batch &<< pcpBatchScaleMax)
    let high = nrPcpHigh(pcp, z, freeHigh)
    if pcp.pointee.count >= high {
      freePcppagesBulk(z, nrPcpFree(pcp, high, freeHigh), pcp, pindex)
    }
  }

  /// `nr_pcp_high()`, in our words: `high` is kept in [high_min, high_max]; a burst of
  /// high-order frees or a zone below its high watermark shrinks it (by `batch << 5`, or by
  /// the recent free count); a pcp that fills up while the zone is healthy grows it to hold
  /// the recent frees plus a batch. (The kernel's reclaim-active case does not arise: no
  /// reclaim; the vmstat worker's periodic decay is not modelled.)
  @inlinable @inline(__always)
  func nrPcpHigh(_ pcp: UnsafeMutablePointer<PerCPUPages>, _ z: UnsafeMutablePointer<Zone>, _ freeHigh: Bool) -> Int {
    let lo = pcp.pointee.highMin
    let hi = pcp.pointee.highMax
    let batch = pcp.pointee.batch
    let high = min(max(pcp.pointee.high, lo), hi)
    pcp.pointee.high = high
    if high == 0 { return 0 }
    if freeHigh {
      pcp.pointee.high = max(high &- (batch &<< pcpBatchScaleMax), lo)
      return 0
    }
    if lo == hi { return high }
    if zoneBelowHigh(z) {
      pcp.pointee.high = max(high &- max(pcp.pointee.freeCount, batch), lo)
      return max(pcp.pointee.count, lo)
    }
    if pcp.pointee.count >= high {
      let need = pcp.pointee.freeCount &+ batch
      if pcp.pointee.high < need { pcp.pointee.high = min(max(need, lo), hi) }
    }
    return high
  }

  /// `nr_pcp_free()`: how many pages a drain frees: the recent free count clamped to
  /// [batch, high - batch], everything when high is 0, up to `batch << 5` for a burst.
  @inlinable
  func nrPcpFree(_ pcp: UnsafeMutablePointer<PerCPUPages>, _ high: Int, _ freeHigh: Bool) -> Int {
    let batch = pcp.pointee.batch
    if freeHigh { return min(pcp.pointee.count, batch &<< pcpBatchScaleMax) }
    if high == 0 { return pcp.pointee.count }
    return min(max(pcp.pointee.freeCount, batch), max(high &- batch, batch))
  }

  /// `free_pcppages_bulk()`: frees `count` pages from the pcp to the buddy under the zone
  /// lock, list by list round-robin after `pindex`, oldest (tail) blocks first. Each block's
  /// migratetype is read again here: the pageblock may have changed (isolation).
  @usableFromInline
  func freePcppagesBulk(
    _ z: UnsafeMutablePointer<Zone>, _ countIn: Int, _ pcp: UnsafeMutablePointer<PerCPUPages>, _ pindexIn: Int
  ) {
    var count = min(countIn, pcp.pointee.count)
    if count <= 0 { return }
    var pindex = pindexIn
    z.pointee.lock.lock()
    while count > 0 && pcp.pointee.count > 0 {
      var tries = 0
      repeat {
        pindex &+= 1
        if pindex >= pcpListCount { pindex = 0 }
        tries &+= 1
      } while pcp.pointee.lists[pindex].head == PageRecord.nilLink && tries <= pcpListCount
      let l = pcp.pointee.lists + pindex
      if l.pointee.head == PageRecord.nilLink { break }
      let order = pindexToOrder(pindex)
      repeat {
        let pfn = pcpPopTail(l)
        count &-= 1 &<< order
        pcp.pointee.count = pcp.pointee.count &- (1 &<< order)
        memMap.presentRecord(pfn).pointee.flags.store(0, ordering: .relaxed)
        let mt = memMap.freeListTypeRaw(pfn)
        freeOneBlock(z, pfn, order, mt)
        tracePcpuDrain(pfn, order, mt)
      } while count > 0 && l.pointee.head != PageRecord.nilLink
    }
    z.pointee.lock.unlock()
    pcp.pointee.drains = pcp.pointee.drains &+ 1
    pcp.pointee.drainCursor = pindex
  }

  /// `drain_all_pages()`: empties every CPU's pcp lists into the buddy.
  public func drainAllPages() {
    for cpu in 0..<cpuCount {
      for zi in 0..<zoneCount {
        let pcp = pcp(cpu * zoneCount + zi)
        pcp.pointee.lock.lock()
        if pcp.pointee.count > 0 {
          freePcppagesBulk(zones + zi, pcp.pointee.count, pcp, pcp.pointee.drainCursor)
        }
        pcp.pointee.lock.unlock()
      }
    }
  }

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
        reportBad(pfn.value, .compound, "free_contig_frozen_range of a tail page", "freeContigFrozenRange", quarantine: false)
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

  /// ``freePagesBulk(_:)`` over a buffer.
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
    if frozen, memMap.record(p) != nil, let blk = freeBlockContaining(p) {
      // A frozen page has no reference to underflow: a range starting inside a free block
      // is found by its head. (A free block starting inside the range is caught per page.)
      reportBad(p, .doubleFree, "page is inside a free block at \(PFN(blk.head))", op, quarantine: false)
      p = min(blk.head &+ (1 &<< blk.order), end)
    }
    while p < end {
      guard memMap.record(p) != nil, let zi = zoneIndex(p) else {
        reportBad(p, .outsideZones, "pfn outside every zone", op, quarantine: false)
        p = skipAbsent(p, end)
        continue
      }
      let z = zones + zi
      let segEnd = min(end, memMap.sectionEnd(p), z.pointee.end)
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
    let slow = poisoning || tracing.load(ordering: .relaxed)
    var recheck = false
    while q < segEnd {
      if frozen && _slowPath(recheck) {
        // Freeing the run just closed may have merged it with free blocks ahead (a hostile
        // frozen range over free memory): pages in those blocks look frozen (refcount 0,
        // no flags), so look them up once here.
        recheck = false
        if let blk = freeBlockContaining(q) {
          reportBad(q, .doubleFree, "page is inside a free block at \(PFN(blk.head))", op, quarantine: false)
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
          reportBad(q, .nonzeroRefcount, "nonzero _refcount", op, quarantine: true)
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

  /// `free_prepared_contig_range()`: the greedy decomposition of a prepared run.
  @inlinable @inline(__always)
  func freePreparedRange(_ pfn: Int, _ n: Int, _ zi: Int) {
    var p = pfn
    var left = n
    while left > 0 {
      let order = chunkOrder(p, left)
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
      let align = p == 0 ? PageGeometry.maxOrder : p.trailingZeroBitCount
      let fit = (Int.bitWidth - 1) - left.leadingZeroBitCount
      let o = min(align, fit, PageGeometry.maxOrder)
      out.append((PFN(p), o))
      p += 1 << o
      left -= 1 << o
    }
    return out
  }
}

import Synchronization

// The per-CPU page lists (`struct per_cpu_pages`), both halves together. Allocation:
// `rmqueue_pcplist()`, its refill `rmqueue_bulk()` and `nr_pcp_alloc()`. Free:
// `__free_frozen_pages()`'s choice of list, `free_frozen_page_commit()`, `nr_pcp_high()`,
// `nr_pcp_free()`, `free_pcppages_bulk()` and `drain_all_pages()`.

extension PageAllocator {
  // MARK: - Allocation half

  /// `rmqueue_pcplist()`: pops the head of this CPU's list, refilling it from the buddy in
  /// a batch when empty. Returns nil when the pcp lock is busy (the caller then takes the
  /// zone lock path), when an ALLOC_HIGHATOMIC request finds the list empty, or when the
  /// zone has nothing. Every call halves `free_count` (the drain scale).
  @inlinable @inline(__always)
  func rmqueuePcplist(
    _ z: UnsafeMutablePointer<Zone>, _ zi: Int, _ order: Int, _ mt: Int, _ flags: AllocFlags
  ) -> Int? {
    let pcp = localPcp(zi)
    if _slowPath(!pcp.pointee.lock.tryLock()) { return nil }
    pcp.pointee.freeCount = pcp.pointee.freeCount &>> 1
    let l = pcp.pointee.lists + orderToPindex(mt, order)
    if _slowPath(l.pointee.head == PageRecord.nilLink) {
      if !pcpRefill(z, pcp, l, order, mt, flags) {
        pcp.pointee.lock.unlock()
        return nil
      }
    }
    let (pfn, r) = pcpPopHead(l)
    r.pointee.flags.store(PG.word(flags: 0, order: order), ordering: .relaxed)
    pcp.pointee.count = pcp.pointee.count &- (1 &<< order)
    pcp.pointee.pgalloc = pcp.pointee.pgalloc &+ (1 &<< order)
    pcp.pointee.lock.unlock()
    return pfn
  }

  /// The refill half of `rmqueue_pcplist()` (`rmqueue_bulk()`): moves a batch of blocks
  /// from the buddy to the tail of the empty pcp list `l`, under the zone lock, in the
  /// order `__rmqueue()` hands them out (physical order within a split block). Returns
  /// false when nothing was added: the zone had none, or the request is ALLOC_HIGHATOMIC
  /// (`nr_pcp_alloc()` has run by then, retuning the pcp). Out of line: the common case
  /// pops a block without refilling.
  @usableFromInline @inline(never)
  func pcpRefill(
    _ z: UnsafeMutablePointer<Zone>, _ pcp: UnsafeMutablePointer<PerCPUPages>, _ l: UnsafeMutablePointer<FreeList>,
    _ order: Int, _ mt: Int, _ flags: AllocFlags
  ) -> Bool {
    let n = nrPcpAlloc(pcp, z, order)
    // High-order atomic requests go to the buddy and its HighAtomic reserve instead.
    if flags.contains(.highAtomic) { return false }
    z.pointee.lock.lock()
    var got = 0
    var mode = RmqueueMode.normal
    while got < n {
      guard let b = rmqueue(z, order, mt, flags, &mode) else { break }
      pcpAddTail(l, b, order)
      got &+= 1
    }
    z.pointee.lock.unlock()
    pcp.pointee.count = pcp.pointee.count &+ (got &<< order)
    pcp.pointee.refills = pcp.pointee.refills &+ 1
    return got != 0
  }

  /// `nr_pcp_alloc()`: how many blocks of `2^order` a refill takes, retuning the pcp.
  ///
  /// `high` is clamped into [high_min, high_max] first (an untouched pcp's 0 becomes
  /// high_min); a pcp whose `high` is below its batch (a boot or disabled pageset) takes 1.
  /// The batch is `batch << alloc_factor` for order 0 and `batch` for higher orders. Unless
  /// `high` is fixed (high_min == high_max) or the zone is flagged ZONE_BELOW_HIGH, `high`
  /// grows by that batch (up to high_max): a pcp that keeps refilling could have kept more.
  /// For order 0 the batch is capped by the room under `high` (at least `batch`), and
  /// alloc_factor grows (up to CONFIG_PCP_BATCH_SCALE_MAX) while the batch fits; every free
  /// halves it again. Higher orders take `batch >> order` blocks, at least 2, unless the
  /// batch is 1 (tiny zones refill one block at every order).
  @inlinable
  func nrPcpAlloc(_ pcp: UnsafeMutablePointer<PerCPUPages>, _ z: UnsafeMutablePointer<Zone>, _ order: Int) -> Int {
    let base = pcp.pointee.batch
    let lo = pcp.pointee.highMin
    let hi = pcp.pointee.highMax
    var high = kernelClamp(pcp.pointee.high, lo, hi)
    pcp.pointee.high = high
    if high < base { return 1 }
    var batch = order == 0 ? base &<< pcp.pointee.allocFactor : base
    if lo != hi && !z.pointee.belowHigh.load(ordering: .relaxed) {
      high = min(high &+ batch, hi)
      pcp.pointee.high = high
    }
    if order == 0 {
      let maxNrAlloc = max(high &- pcp.pointee.count &- base, base)
      if batch <= maxNrAlloc && pcp.pointee.allocFactor < pcpBatchScaleMax {
        pcp.pointee.allocFactor = pcp.pointee.allocFactor &+ 1
      }
      batch = min(batch, maxNrAlloc)
    }
    if batch > 1 { batch = max(batch &>> order, 2) }
    return batch
  }

  /// Puts a block on a pcp list's tail (a refill: `rmqueue_bulk()` adds at the tail).
  @inlinable @inline(__always)
  func pcpAddTail(_ l: UnsafeMutablePointer<FreeList>, _ pfn: Int, _ order: Int) {
    let r = memMap.presentRecord(pfn)
    r.pointee.flags.store(PG.word(flags: PG.pcp, order: order), ordering: .relaxed)
    linkTail(l, pfn, r)
  }

  /// Puts a block on a pcp list's head (a free: the hot end).
  @inlinable @inline(__always)
  func pcpAddHead(_ l: UnsafeMutablePointer<FreeList>, _ pfn: Int, _ order: Int) {
    let r = memMap.presentRecord(pfn)
    r.pointee.flags.store(PG.word(flags: PG.pcp, order: order), ordering: .relaxed)
    linkHead(l, pfn, r)
  }

  /// Pops the newest block (the head) of a non-empty pcp list: an allocation takes the
  /// cache-hot end. Returns the block's record too, which the caller writes next.
  @inlinable @inline(__always)
  func pcpPopHead(_ l: UnsafeMutablePointer<FreeList>) -> (pfn: Int, record: UnsafeMutablePointer<PageRecord>) {
    let pfn = Int(l.pointee.head)
    let r = memMap.presentRecord(pfn)
    let next = r.pointee.next
    l.pointee.head = next
    if next != PageRecord.nilLink {
      memMap.presentRecord(Int(next)).pointee.prev = PageRecord.nilLink
    } else {
      l.pointee.tail = PageRecord.nilLink
    }
    l.pointee.count = l.pointee.count &- 1
    return (pfn, r)
  }

  /// Pops the oldest block (the tail) of a non-empty pcp list: a drain frees the coldest
  /// blocks first. Returns the block's record too, which the caller writes next.
  @inlinable @inline(__always)
  func pcpPopTail(_ l: UnsafeMutablePointer<FreeList>) -> (pfn: Int, record: UnsafeMutablePointer<PageRecord>) {
    let pfn = Int(l.pointee.tail)
    let r = memMap.presentRecord(pfn)
    let prev = r.pointee.prev
    l.pointee.tail = prev
    if prev != PageRecord.nilLink {
      memMap.presentRecord(Int(prev)).pointee.next = PageRecord.nilLink
    } else {
      l.pointee.head = PageRecord.nilLink
    }
    l.pointee.count = l.pointee.count &- 1
    return (pfn, r)
  }

  // MARK: - Free half

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

  /// `free_frozen_page_commit()`: adds the block to the head of its pcp list, then drains
  /// to the buddy when the pcp has reached the limit `nr_pcp_high()` returns.
  ///
  /// Every free halves `alloc_factor` (the refill scale) and adds to `free_count` while it
  /// is below `batch << CONFIG_PCP_BATCH_SCALE_MAX` (the test comes before the add, so an
  /// order-9 free can overshoot by 511). A free of order 1...3 following another such free,
  /// with `free_count` at least `batch + high_min / 2`, is a burst ("free_high"); with
  /// PCPF_FREE_HIGH_BATCH it also needs a batch of pages on the pcp. The drain itself is
  /// out of line (``freeCommitDrain(_:_:_:_:_:)``).
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
    let batch = pcp.pointee.batch
    var freeHigh = false
    if order >= 1 && order <= PageGeometry.costlyOrder {
      // Many high-order frees with no allocation in between: drain harder.
      freeHigh =
        pcp.pointee.freeCount >= batch &+ pcp.pointee.highMin / 2 && pcp.pointee.prevFreeHighOrder
        && (!pcp.pointee.freeHighBatch || pcp.pointee.count >= batch)
      pcp.pointee.prevFreeHighOrder = true
    } else if pcp.pointee.prevFreeHighOrder {
      pcp.pointee.prevFreeHighOrder = false
    }
    if pcp.pointee.freeCount < batch &<< pcpBatchScaleMax {
      pcp.pointee.freeCount = pcp.pointee.freeCount &+ (1 &<< order)
    }
    let high = nrPcpHigh(pcp, z, batch, freeHigh)
    if _fastPath(pcp.pointee.count < high) { return }
    freeCommitDrain(z, pcp, pindex, high, freeHigh)
  }

  /// The drain of `free_frozen_page_commit()`: `nr_pcp_free()` pages, in pieces of at most
  /// `batch`, each piece starting again at the list just freed to (`pindex`), so a block
  /// that pushed the pcp over its limit is the first to go back (the oldest of its list).
  /// Then, if the zone is flagged ZONE_BELOW_HIGH but is above its high watermark again,
  /// the flag is cleared: only this path clears it. (The kernel drops and retakes the pcp
  /// lock between pieces and gives up if that fails; with the lock held throughout, the
  /// pieces run to the end, as they do whenever the retake succeeds.)
  @usableFromInline @inline(never)
  func freeCommitDrain(
    _ z: UnsafeMutablePointer<Zone>, _ pcp: UnsafeMutablePointer<PerCPUPages>, _ pindex: Int, _ high: Int,
    _ freeHigh: Bool
  ) {
    let batch = pcp.pointee.batch
    var toFree = nrPcpFree(pcp, batch, high, freeHigh)
    while toFree > 0 && pcp.pointee.count > 0 {
      let piece = min(toFree, batch)
      freePcppagesBulk(z, piece, pcp, pindex)
      toFree &-= piece
    }
    if z.pointee.belowHigh.load(ordering: .relaxed)
      && zoneWatermarkOK(z, 0, z.pointee.wmarkHigh, ZoneKind.movable.rawValue)
    {
      z.pointee.belowHigh.store(false, ordering: .relaxed)
    }
  }

  /// `nr_pcp_high()`: the pcp's limit for this free, retuning `high` on the way.
  ///
  /// `high` is first clamped into [high_min, high_max] (an untouched pcp's 0 becomes
  /// high_min here). A burst of high-order frees shrinks it by `batch << 5` and drains now
  /// (limit 0); with high_min == high_max (percpu_pagelist_high_fraction set) it is fixed;
  /// while the zone is flagged ZONE_BELOW_HIGH it shrinks by the recent free count and the
  /// pcp drains from high_min on; otherwise a pcp that reached `high` grows it to hold the
  /// recent frees plus a batch, for the next frees (this one compares with the old value).
  /// (The kernel's ZONE_RECLAIM_ACTIVE case does not arise: no reclaim.)
  @inlinable @inline(__always)
  func nrPcpHigh(
    _ pcp: UnsafeMutablePointer<PerCPUPages>, _ z: UnsafeMutablePointer<Zone>, _ batch: Int, _ freeHigh: Bool
  ) -> Int {
    let lo = pcp.pointee.highMin
    let hi = pcp.pointee.highMax
    let high = kernelClamp(pcp.pointee.high, lo, hi)
    pcp.pointee.high = high
    if _slowPath(high == 0) { return 0 }
    if _slowPath(freeHigh) {
      pcp.pointee.high = max(high &- (batch &<< pcpBatchScaleMax), lo)
      return 0
    }
    if lo == hi { return high }
    if _slowPath(z.pointee.belowHigh.load(ordering: .relaxed)) {
      pcp.pointee.high = max(high &- max(pcp.pointee.freeCount, batch), lo)
      return max(pcp.pointee.count, lo)
    }
    if pcp.pointee.count >= high {
      let need = pcp.pointee.freeCount &+ batch
      if high < need { pcp.pointee.high = kernelClamp(need, lo, hi) }
    }
    return high
  }

  /// `nr_pcp_free()`: how many pages a drain frees: up to `batch << 5` in a burst, 1 when
  /// `high` is below `batch` (a disabled or boot pageset), else the recent free count
  /// clamped to [batch, high - batch] (the kernel's clamp).
  @inlinable
  func nrPcpFree(_ pcp: UnsafeMutablePointer<PerCPUPages>, _ batch: Int, _ high: Int, _ freeHigh: Bool) -> Int {
    if freeHigh { return min(pcp.pointee.count, batch &<< pcpBatchScaleMax) }
    if high < batch { return 1 }
    return kernelClamp(pcp.pointee.freeCount, batch, high &- batch)
  }

  /// `free_pcppages_bulk()`: frees at least `count` pages (or all there are) from the pcp
  /// to the buddy under the zone lock. The list `pindex` is visited first; each visited
  /// list is emptied oldest (tail) block first while pages remain to free, then the next
  /// non-empty list after it is taken, wrapping round. Each block's migratetype is read
  /// again here (the pageblock may have been isolated since), the block is merged, then
  /// traced. `count` may go negative: a THP block ends a drain that had 15 pages left.
  @usableFromInline
  func freePcppagesBulk(
    _ z: UnsafeMutablePointer<Zone>, _ countIn: Int, _ pcp: UnsafeMutablePointer<PerCPUPages>, _ pindexIn: Int
  ) {
    var count = min(countIn, pcp.pointee.count)
    if count <= 0 { return }
    // One before the requested list: the first step of the search lands on it.
    var pindex = pindexIn &- 1
    z.pointee.lock.lock()
    while count > 0 {
      // pcp.count >= count > 0: some list is non-empty.
      repeat {
        pindex &+= 1
        if pindex >= PCPList.count { pindex = 0 }
      } while pcp.pointee.lists[pindex].head == PageRecord.nilLink
      let l = pcp.pointee.lists + pindex
      let order = pindexToOrder(pindex)
      repeat {
        let (pfn, r) = pcpPopTail(l)
        count &-= 1 &<< order
        pcp.pointee.count = pcp.pointee.count &- (1 &<< order)
        r.pointee.flags.store(0, ordering: .relaxed)
        let mt = memMap.freeListTypeRaw(pfn)
        freeOneBlock(z, pfn, order, mt)
        tracePcpuDrain(pfn, order, mt)
      } while count > 0 && l.pointee.head != PageRecord.nilLink
    }
    z.pointee.lock.unlock()
    // Wrapping even here, once per drain: an overflow check costs the drain loop above a
    // register and about 1.5% of its instructions (callgrind). A plain assignment, not
    // `&+=`: ThreadSanitizer instruments a compound assignment through `pointee` as a write
    // to the whole record, lock word included, and reports a race with every trylock.
    pcp.pointee.drains = pcp.pointee.drains &+ 1
  }

  /// `drain_pages_zone()`: empties one pcp in pieces of `batch << 5` pages, each a
  /// `free_pcppages_bulk()` from list 0 (drains keep no cursor between calls).
  func drainPagesZone(_ z: UnsafeMutablePointer<Zone>, _ pcp: UnsafeMutablePointer<PerCPUPages>) {
    var left = 0
    repeat {
      pcp.pointee.lock.lock()
      left = pcp.pointee.count
      if left > 0 {
        let toDrain = min(left, pcp.pointee.batch &<< pcpBatchScaleMax)
        freePcppagesBulk(z, toDrain, pcp, 0)
        left &-= toDrain
      }
      pcp.pointee.lock.unlock()
    } while left > 0
  }

  /// `decay_pcp_high()` on every CPU's pcp of every populated zone: one tick of the
  /// kernel's vmstat worker, which runs it about once a second on each CPU while there is
  /// work. A pcp whose `high` was tuned above high_min gets an eighth taken off it (not
  /// below high_min, nor below `count - (batch << 5)`), and drains down to the new `high`
  /// in pieces of `batch`, each from list 0. PageAlloc has no clock: the decay happens only
  /// when this is called. Returns whether some pcp has more to do (a `high` still above
  /// high_min, or pages drained this time).
  @discardableResult
  public func decayPcpHigh() -> Bool {
    var todo = false
    for cpu in 0..<cpuCount {
      for zi in 0..<zoneCount where zones[zi].present > 0 {
        let pcp = pcp(cpu * zoneCount + zi)
        pcp.pointee.lock.lock()
        let lo = pcp.pointee.highMin
        let batch = pcp.pointee.batch
        if pcp.pointee.high > lo {
          let high = pcp.pointee.high
          pcp.pointee.high = max(pcp.pointee.count &- (batch &<< pcpBatchScaleMax), high &- (high &>> 3), lo)
          if pcp.pointee.high > lo { todo = true }
        }
        var toDrain = pcp.pointee.count &- pcp.pointee.high
        while toDrain > 0 {
          let piece = min(toDrain, batch)
          freePcppagesBulk(zones + zi, piece, pcp, 0)
          todo = true
          toDrain &-= piece
        }
        pcp.pointee.lock.unlock()
      }
    }
    return todo
  }

  /// `drain_all_pages()`: empties every CPU's pcp lists into the buddy, CPU by CPU, each
  /// CPU's zones in zone order (`drain_pages()`).
  public func drainAllPages() {
    for cpu in 0..<cpuCount {
      for zi in 0..<zoneCount { drainPagesZone(zones + zi, pcp(cpu * zoneCount + zi)) }
    }
  }
}

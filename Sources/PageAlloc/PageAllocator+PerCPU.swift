import Synchronization

// The per-CPU page lists (`struct per_cpu_pages`), both halves together. Allocation:
// `rmqueue_pcplist()`, its refill `rmqueue_bulk()` and `nr_pcp_alloc()`. Free:
// `__free_frozen_pages()`'s choice of list, `free_frozen_page_commit()`, `nr_pcp_high()`,
// `nr_pcp_free()`, `free_pcppages_bulk()` and `drain_all_pages()`.

extension PageAllocator {
  // MARK: - Allocation half

  /// `rmqueue_pcplist()`: pops the head of this CPU's list, refilling it from the buddy in
  /// a batch when empty. Returns nil when the pcp lock is busy (the caller then takes the
  /// zone lock path) or the zone has nothing.
  @inlinable @inline(__always)
  func rmqueuePcplist(_ z: UnsafeMutablePointer<Zone>, _ zi: Int, _ order: Int, _ mt: Int) -> Int? {
    let pcp = localPcp(zi)
    if _slowPath(!pcp.pointee.lock.tryLock()) { return nil }
    pcp.pointee.freeCount = pcp.pointee.freeCount &>> 1
    let l = pcp.pointee.lists + orderToPindex(mt, order)
    if _slowPath(l.pointee.head == PageRecord.nilLink) {
      if !pcpRefill(z, pcp, l, order, mt) {
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
  /// from the buddy to the empty pcp list `l`, under the zone lock. Returns false when the
  /// zone had none. Out of line: the common case pops a block without refilling.
  @usableFromInline @inline(never)
  func pcpRefill(
    _ z: UnsafeMutablePointer<Zone>, _ pcp: UnsafeMutablePointer<PerCPUPages>, _ l: UnsafeMutablePointer<FreeList>,
    _ order: Int, _ mt: Int
  ) -> Bool {
    let n = nrPcpAlloc(pcp, z, order)
    z.pointee.lock.lock()
    var got = 0
    while got < n {
      guard let b = rmqueue(z, order, mt) else { break }
      pcpAddTail(l, b, order)
      got &+= 1
    }
    z.pointee.lock.unlock()
    pcp.pointee.count = pcp.pointee.count &+ (got &<< order)
    pcp.pointee.refills = pcp.pointee.refills &+ 1
    return got != 0
  }

  /// `nr_pcp_alloc()`: how many blocks a refill takes. Doubles (alloc_factor) while
  /// allocations repeat without frees, bounded by the room left below `high`; high orders
  /// take `batch >> order` blocks, at least 2.
  @inlinable
  func nrPcpAlloc(_ pcp: UnsafeMutablePointer<PerCPUPages>, _ z: UnsafeMutablePointer<Zone>, _ order: Int) -> Int {
    let base = pcp.pointee.batch
    let high = pcp.pointee.high
    if high == 0 { return 1 }
    var batch = base
    if pcp.pointee.highMin != pcp.pointee.highMax && !zoneBelowHigh(z) {
      let room = max(high &- pcp.pointee.count &- base, base)
      batch = base &<< pcp.pointee.allocFactor
      if batch <= room && pcp.pointee.allocFactor < pcpBatchScaleMax {
        pcp.pointee.allocFactor = pcp.pointee.allocFactor &+ 1
      }
      batch = min(batch, room)
    }
    if order > 0 { batch = max(batch &>> order, 2) }
    return batch
  }

  /// ZONE_BELOW_HIGH, computed instead of kept as a flag.
  @inlinable @inline(__always)
  func zoneBelowHigh(_ z: UnsafeMutablePointer<Zone>) -> Bool {
    z.pointee.nrFreePages.load(ordering: .relaxed) < z.pointee.wmarkHigh
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
        if pindex >= PCPList.count { pindex = 0 }
        tries &+= 1
      } while pcp.pointee.lists[pindex].head == PageRecord.nilLink && tries <= PCPList.count
      let l = pcp.pointee.lists + pindex
      if l.pointee.head == PageRecord.nilLink { break }
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
}

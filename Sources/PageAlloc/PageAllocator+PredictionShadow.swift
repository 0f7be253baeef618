import Synchronization

// The kernel's own moves applied to the model during a trace prediction (see
// PageAllocator+Prediction.swift): the pcp bookkeeping the kernel does at each event, with
// the blocks the trace names.

extension PageAllocator {
  // MARK: - Shadow moves (what the kernel did)

  /// The kernel freed the block at `pfn` (pages the model holds as allocated) to `cpu`'s
  /// pcp: `free_frozen_page_commit()`'s first half runs on the model (list head,
  /// bookkeeping, `high` tuning) but nothing is drained; returns the list and the pages the
  /// model would drain now (0: none), with `extraCount` unseen pages counted in the pcp.
  /// Returns nil when the block goes to the buddy instead (not a pcp order, or an isolated
  /// pageblock), which is done.
  package func shadowFreeToPcp(_ pfn: Int, order: Int, cpu: Int, extraCount: Int = 0) -> (
    zone: Int, pindex: Int, toFree: Int
  )? {
    guard let zi = zoneIndex(pfn) else { return nil }
    releasePages(pfn, order)
    let z = zones + zi
    var mt = memMap.freeListTypeRaw(pfn)
    if !pcpAllowedOrder(order) || mt == MigrateType.isolate.rawValue {
      zoneFreeBlock(z, pfn, order)
      return nil
    }
    if mt >= MigrateType.pcpTypes { mt = MigrateType.movable.rawValue }
    let pcp = pcp(cpu &* zoneCount &+ zi)
    pcp.pointee.lock.lock()
    pcp.pointee.count = pcp.pointee.count &+ extraCount
    let (high, freeHigh) = freeCommitEnqueue(z, pcp, pfn, mt, order)
    let toFree = pcp.pointee.count < high ? 0 : nrPcpFree(pcp, pcp.pointee.batch, high, freeHigh)
    pcp.pointee.count = pcp.pointee.count &- extraCount
    pcp.pointee.lock.unlock()
    return (zi, orderToPindex(mt, order), toFree)
  }

  /// The kernel freed the block at `pfn` (pages the model holds as allocated) straight to
  /// the buddy (`free_one_page()`).
  package func shadowFreeToBuddy(_ pfn: Int, order: Int) {
    guard let zi = zoneIndex(pfn) else { return }
    releasePages(pfn, order)
    zoneFreeBlock(zones + zi, pfn, order)
  }

  /// The kernel's commit drain on a pcp of `zone` is over: what
  /// ``freeCommitDrain(_:_:_:_:_:)`` does after its pieces (the ZONE_BELOW_HIGH flag).
  package func shadowCommitDrainFinished(zone zi: Int) {
    clearBelowHighAfterDrain(zones + zi)
  }

  /// Clears the allocated pages of a block for a free (what `free_pages_prepare()` leaves).
  func releasePages(_ pfn: Int, _ order: Int) {
    var q = pfn
    while q < pfn &+ (1 &<< order) {
      let r = memMap.presentRecord(q)
      r.pointee.flags.store(0, ordering: .relaxed)
      r.pointee.refcount.store(0, ordering: .relaxed)
      q &+= 1
    }
  }

  /// `rmqueue_pcplist()`'s bookkeeping for one allocation from `cpu`'s pcp (free_count
  /// halves); the block itself is taken by `claimFreeRange`.
  package func shadowPcpAllocation(cpu: Int, zone zi: Int, order: Int) {
    let pcp = pcp(cpu &* zoneCount &+ zi)
    pcp.pointee.lock.lock()
    pcp.pointee.freeCount = pcp.pointee.freeCount &>> 1
    pcp.pointee.pgalloc = pcp.pointee.pgalloc &+ (1 &<< order)
    pcp.pointee.lock.unlock()
  }

  /// The start of a refill of `cpu`'s pcp for `zone`: `nr_pcp_alloc()` on the real pcp
  /// (its `high` and alloc_factor move as the kernel's do), with `extraCount` unseen pages
  /// in the count. Returns the model's batch, and the figures before, which
  /// ``shadowRestoreTuning(cpu:zone:_:)`` puts back if the trace shows it was no refill.
  package func shadowRefillBegin(cpu: Int, zone zi: Int, order: Int, extraCount: Int = 0) -> (
    count: Int, before: PcpTuning
  ) {
    let pcp = pcp(cpu &* zoneCount &+ zi)
    pcp.pointee.lock.lock()
    defer { pcp.pointee.lock.unlock() }
    let before = tuning(pcp)
    pcp.pointee.count = pcp.pointee.count &+ extraCount
    let n = nrPcpAlloc(pcp, zones + zi, order)
    pcp.pointee.count = pcp.pointee.count &- extraCount
    pcp.pointee.refills = pcp.pointee.refills &+ 1
    return (n, before)
  }

  /// The kernel did not drain after a free the model would have drained after: its `high`
  /// was above its count (`free_frozen_page_commit()` drains from `count >= high` on). The
  /// model's `high` is raised to the count plus one page, `extraCount` unseen pages
  /// included (at most high_max): a lower bound the trace shows, where the growth on
  /// refills before the trace (alloc_factor's history) and the vmstat worker's decay of
  /// `high` on its timer do not show in it.
  package func shadowLearnHighAbove(cpu: Int, zone zi: Int, extraCount: Int = 0) {
    let pcp = pcp(cpu &* zoneCount &+ zi)
    pcp.pointee.lock.lock()
    let need = min(pcp.pointee.count &+ extraCount &+ 1, pcp.pointee.highMax)
    if pcp.pointee.high < need { pcp.pointee.high = need }
    pcp.pointee.lock.unlock()
  }

  /// Puts back a pcp's tuning figures (not its count or lists).
  package func shadowRestoreTuning(cpu: Int, zone zi: Int, _ t: PcpTuning) {
    let pcp = pcp(cpu &* zoneCount &+ zi)
    pcp.pointee.lock.lock()
    pcp.pointee.high = t.high
    pcp.pointee.highMin = t.highMin
    pcp.pointee.highMax = t.highMax
    pcp.pointee.batch = t.batch
    pcp.pointee.freeCount = t.freeCount
    pcp.pointee.allocFactor = t.allocFactor
    pcp.pointee.prevFreeHighOrder = t.prevFreeHighOrder
    pcp.pointee.lock.unlock()
  }

  /// Sets a pcp's high, high_min, high_max and batch (what /proc/zoneinfo showed on the
  /// machine that recorded a trace).
  package func shadowSetTuning(cpu: Int, zone zi: Int, high: Int, highMin: Int, highMax: Int, batch: Int) {
    let pcp = pcp(cpu &* zoneCount &+ zi)
    pcp.pointee.lock.lock()
    pcp.pointee.high = high
    pcp.pointee.highMin = highMin
    pcp.pointee.highMax = highMax
    pcp.pointee.batch = max(batch, 1)
    pcp.pointee.lock.unlock()
  }

  /// The kernel moved the block at `pfn` of `order` to the tail of list `pindex` of `cpu`'s
  /// pcp (`rmqueue_bulk()`): the block leaves the buddy (the rest of a larger free block
  /// goes back to the free lists, as `expand()` leaves it) or another pcp list. Returns
  /// false, changing nothing, when some page of it is not free in the model.
  @discardableResult
  package func shadowMoveToPcpTail(_ pfn: Int, order: Int, cpu: Int, pindex: Int) -> Bool {
    guard let zi = zoneIndex(pfn) else { return false }
    if case .pcp(let c, _, let li, let head, let o) = place(of: pfn), head == pfn, o == order {
      if c == cpu && li == pindex { return true }
      unlinkFromPcp(zi, c, li, pfn, order)
    } else if claimFreeRange(pfn, count: 1 &<< order, account: false) != .claimed {
      return false
    } else {
      releasePages(pfn, order)
    }
    let pcp = pcp(cpu &* zoneCount &+ zi)
    pcp.pointee.lock.lock()
    pcpAddTail(pcp.pointee.lists + pindex, pfn, order)
    pcp.pointee.count = pcp.pointee.count &+ 1 &<< order
    pcp.pointee.lock.unlock()
    return true
  }

  /// Where on a pcp list a moved block goes.
  package enum PcpPosition: Equatable, Sendable {
    case head
    case tail
    /// Right after this block, which must be on the list (at the head when it is not).
    case after(Int)
  }

  /// Moves the pcp block at `pfn` to list `pindex` of `cpu`'s pcp, at `position` (a
  /// prediction that learnt the block was on another list). Returns false when `pfn` is
  /// not the head of a pcp block or the list is of another order.
  @discardableResult
  package func shadowMovePcpBlock(_ pfn: Int, cpu: Int, pindex: Int, position: PcpPosition) -> Bool {
    guard case .pcp(let c, let zi, let li, let head, let order) = place(of: pfn), head == pfn else { return false }
    guard pindexToOrder(pindex) == order else { return false }
    unlinkFromPcp(zi, c, li, pfn, order)
    let pcp = pcp(cpu &* zoneCount &+ zi)
    pcp.pointee.lock.lock()
    let l = pcp.pointee.lists + pindex
    switch position {
    case .head:
      pcpAddHead(l, pfn, order)
    case .tail:
      pcpAddTail(l, pfn, order)
    case .after(let prev):
      // The block before must be on this very list: walk it.
      var p = l.pointee.head
      while p != PageRecord.nilLink && Int(p) != prev { p = memMap.presentRecord(Int(p)).pointee.next }
      if p == PageRecord.nilLink {
        pcpAddHead(l, pfn, order)
      } else {
        let r = memMap.presentRecord(pfn)
        r.pointee.flags.store(PG.word(flags: PG.pcp, order: order), ordering: .relaxed)
        let pr = memMap.presentRecord(prev)
        let next = pr.pointee.next
        r.pointee.prev = p
        r.pointee.next = next
        pr.pointee.next = UInt32(truncatingIfNeeded: pfn)
        if next != PageRecord.nilLink {
          memMap.presentRecord(Int(next)).pointee.prev = UInt32(truncatingIfNeeded: pfn)
        } else {
          l.pointee.tail = UInt32(truncatingIfNeeded: pfn)
        }
        l.pointee.count = l.pointee.count &+ 1
      }
    }
    pcp.pointee.count = pcp.pointee.count &+ 1 &<< order
    pcp.pointee.lock.unlock()
    return true
  }

  /// Unlinks a pcp block from its list (flags cleared) and takes it off the pcp's count.
  func unlinkFromPcp(_ zi: Int, _ cpu: Int, _ pindex: Int, _ pfn: Int, _ order: Int) {
    let pc = pcp(cpu &* zoneCount &+ zi)
    pc.pointee.lock.lock()
    let r = memMap.presentRecord(pfn)
    unlink(pc.pointee.lists + pindex, r)
    r.pointee.flags.store(0, ordering: .relaxed)
    pc.pointee.count = pc.pointee.count &- 1 &<< order
    pc.pointee.lock.unlock()
  }

  /// What the model had at a block the kernel drained.
  package enum ShadowDrainResult: Equatable, Sendable {
    /// It was a pcp block of that order: it went to the buddy.
    case fromPcp(cpu: Int, pindex: Int)
    /// The model held its pages as allocated (a block on the kernel's pcp before the
    /// trace began): they went to the buddy.
    case fromAllocated
    /// The model had some of its pages free already (in the buddy, or in other pcp
    /// blocks): they were taken back, and the block went to the buddy whole.
    case alreadyFree
  }

  /// The kernel's `free_pcppages_bulk()` freed the block at `pfn` of `order` to the buddy,
  /// reading its pageblock's type as `migrateType`: the model's pageblock takes that type
  /// when it differs (``shadowSetPageblockType(_:_:)``), and the block leaves the pcp list
  /// it is on (or the allocated pages) for the buddy, merging (`__free_one_page()`).
  package func shadowDrain(_ pfn: Int, order: Int, migrateType mt: Int) -> ShadowDrainResult {
    guard let zi = zoneIndex(pfn), pfn &+ (1 &<< order) <= zones[zi].end else { return .alreadyFree }
    if mt < MigrateType.isolate.rawValue { shadowSetPageblockType(pfn, mt) }
    let z = zones + zi
    var result = ShadowDrainResult.fromAllocated
    if case .pcp(let cpu, _, let li, let head, let o) = place(of: pfn), head == pfn, o == order {
      unlinkFromPcp(zi, cpu, li, pfn, order)
      result = .fromPcp(cpu: cpu, pindex: li)
    } else {
      // The model had some of these pages free, on a pcp list or in the buddy, in other
      // blocks: take them, so that the block goes to the buddy whole, as the kernel's did.
      var p = pfn
      while p < pfn &+ (1 &<< order) {
        switch place(of: p) {
        case .allocated:
          p &+= 1
        case .buddy, .pcp:
          _ = claimFreeRange(p, count: 1, account: false)
          result = .alreadyFree
          p &+= 1
        }
      }
      releasePages(pfn, order)
    }
    z.pointee.lock.lock()
    freeOneBlock(z, pfn, order, memMap.freeListTypeRaw(pfn))
    z.pointee.lock.unlock()
    return result
  }

  /// Gives the pageblock holding `pfn` the type `mt` (a type the trace showed), moving its
  /// free buddy blocks to that type's lists (tail), as `move_freepages_block()` does. A
  /// free block larger than the pageblock takes the type for all its pageblocks, so that a
  /// free block never straddles two types. Isolated pageblocks are left alone.
  package func shadowSetPageblockType(_ pfn: Int, _ mt: Int) {
    guard let zi = zoneIndex(pfn), mt < MigrateType.isolate.rawValue else { return }
    let z = zones + zi
    z.pointee.lock.lock()
    defer { z.pointee.lock.unlock() }
    if memMap.isIsolated(pfn) || memMap.freeListTypeRaw(pfn) == mt { return }
    var start = pfn & ~(PageGeometry.pageblockPages - 1)
    var end = start + PageGeometry.pageblockPages
    if let b = freeBlockContaining(pfn), !b.onPcp, b.order > PageGeometry.pageblockOrder {
      start = b.head
      end = b.head + (1 << b.order)
    }
    start = max(start, z.pointee.start)
    end = min(end, z.pointee.end)
    moveFreeBlocks(z, start..<end, from: nil, to: mt)
    var b = start & ~(PageGeometry.pageblockPages - 1)
    while b < end {
      memMap.setMigrateType(b, MigrateType(rawValue: mt)!)
      b += PageGeometry.pageblockPages
    }
  }
}

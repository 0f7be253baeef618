import Synchronization

// Questions a trace prediction asks the model, and the kernel's own moves applied to it.
//
// `pagealloc replay --predict` runs the model in the shadow of a real kernel trace: before
// each decision the kernel made, it asks the model what the model would decide (the
// queries below read the pcp lists and the free lists and change nothing), then applies
// what the kernel really did (the `shadow` moves: the pcp bookkeeping the kernel does at
// that point, with the blocks the trace names). The queries follow the real functions of
// PageAllocator+PerCPU.swift and PageAllocator+Rmqueue.swift step for step, and
// Tests/PageAllocTests/PredictionQueryTests.swift checks each against the real function on
// random states: a change to one fails that test until the other follows.

/// Where a page is in the model.
package enum BlockPlace: Equatable, Sendable {
  /// Inside the free buddy block at `head` of `order` on the `type` list.
  case buddy(head: Int, order: Int, type: Int)
  /// Inside the pcp block at `head` of `order`, on list `pindex` of `cpu`'s pcp for `zone`.
  case pcp(cpu: Int, zone: Int, pindex: Int, head: Int, order: Int)
  /// Not free (in use, reserved, quarantined, or outside every zone).
  case allocated
}

/// How `__rmqueue()` finds the block it returns.
package enum RmqueueSource: Equatable, Sendable {
  /// `__rmqueue_smallest()` on the requested type's lists.
  case smallest
  /// `__rmqueue_claim()`: a fallback type's block whose pageblock is claimed.
  case claim
  /// `__rmqueue_steal()`: a fallback type's block taken without claiming.
  case steal
}

/// What `__rmqueue()` would return next, found without taking it.
package struct RmqueuePeek: Equatable, Sendable {
  /// The first page of the block returned.
  package var pfn: Int
  package var source: RmqueueSource
  /// The free block it is cut from (before `expand()`): its order and list type.
  package var blockOrder: Int
  package var blockType: Int
}

/// A pcp's figures, as a prediction reads them (and puts them back).
package struct PcpTuning: Equatable, Sendable {
  package var count: Int
  package var high: Int
  package var highMin: Int
  package var highMax: Int
  package var batch: Int
  package var freeCount: Int
  package var allocFactor: Int
  package var prevFreeHighOrder: Bool
}

extension PageAllocator {
  // MARK: - pcp list geometry

  /// NR_PCP_LISTS.
  package static var pcpListCount: Int { PCPList.count }

  /// `order_to_pindex()` for the list a block of `order` and pageblock type `migrateType`
  /// goes to (HighAtomic and CMA blocks use the Movable list, as `free_frozen_pages()`
  /// does), or nil when the order has no pcp list.
  package static func pcpIndex(order: Int, migrateType: Int) -> Int? {
    guard pcpAllowedOrder(order) else { return nil }
    return orderToPindex(migrateType >= MigrateType.pcpTypes ? MigrateType.movable.rawValue : migrateType, order)
  }

  /// `pindex_to_order()`.
  package static func pcpOrder(pindex: Int) -> Int { pindexToOrder(pindex) }

  /// The migratetype whose blocks a pcp list holds (Movable for the movable THP list).
  package static func pcpType(pindex: Int) -> Int {
    if pindex == PCPList.thpMovable { return MigrateType.movable.rawValue }
    if pindex == PCPList.thp { return MigrateType.unmovable.rawValue }
    return pindex % MigrateType.pcpTypes
  }

  /// `pcp_allowed_order()`.
  package static func isPcpOrder(_ order: Int) -> Bool { pcpAllowedOrder(order) }

  /// The zone holding `pfn`, or nil.
  package func zoneIndex(of pfn: Int) -> Int? { zoneIndex(pfn) }

  // MARK: - Queries (nothing changes)

  /// The block `rmqueue_pcplist()` would hand out next from list `pindex` of `cpu`'s pcp
  /// for zone `zone`: the list head, or nil when the list is empty (a refill comes first).
  package func pcpHead(cpu: Int, zone zi: Int, pindex: Int) -> Int? {
    let pcp = pcp(cpu &* zoneCount &+ zi)
    pcp.pointee.lock.lock()
    defer { pcp.pointee.lock.unlock() }
    let h = pcp.pointee.lists[pindex].head
    return h == PageRecord.nilLink ? nil : Int(h)
  }

  /// The blocks of a pcp list, head (next allocated) to tail (next drained).
  package func pcpBlocks(cpu: Int, zone zi: Int, pindex: Int) -> [Int] {
    let pcp = pcp(cpu &* zoneCount &+ zi)
    pcp.pointee.lock.lock()
    defer { pcp.pointee.lock.unlock() }
    var out: [Int] = []
    var p = pcp.pointee.lists[pindex].head
    while p != PageRecord.nilLink {
      out.append(Int(p))
      p = memMap.presentRecord(Int(p)).pointee.next
    }
    return out
  }

  /// The blocks on a pcp list.
  package func pcpListLength(cpu: Int, zone zi: Int, pindex: Int) -> Int {
    let pcp = pcp(cpu &* zoneCount &+ zi)
    pcp.pointee.lock.lock()
    defer { pcp.pointee.lock.unlock() }
    return pcp.pointee.lists[pindex].count
  }

  /// A pcp's count, high, batch and the tuning state behind them.
  package func pcpTuning(cpu: Int, zone zi: Int) -> PcpTuning {
    let pcp = pcp(cpu &* zoneCount &+ zi)
    pcp.pointee.lock.lock()
    defer { pcp.pointee.lock.unlock() }
    return tuning(pcp)
  }

  func tuning(_ pcp: UnsafeMutablePointer<PerCPUPages>) -> PcpTuning {
    PcpTuning(
      count: pcp.pointee.count, high: pcp.pointee.high, highMin: pcp.pointee.highMin,
      highMax: pcp.pointee.highMax, batch: pcp.pointee.batch, freeCount: pcp.pointee.freeCount,
      allocFactor: pcp.pointee.allocFactor, prevFreeHighOrder: pcp.pointee.prevFreeHighOrder)
  }

  /// Where `pfn` is: inside a free buddy block, inside a pcp block (and on which list), or
  /// not free.
  package func place(of pfn: Int) -> BlockPlace {
    guard let zi = zoneIndex(pfn), memMap.record(pfn) != nil else { return .allocated }
    let z = zones + zi
    z.pointee.lock.lock()
    defer { z.pointee.lock.unlock() }
    guard let b = freeBlockContaining(pfn) else { return .allocated }
    if !b.onPcp { return .buddy(head: b.head, order: b.order, type: memMap.freeListTypeRaw(b.head)) }
    guard let (cpu, pindex) = findPcpList(zi, b.head, b.order) else { return .allocated }
    return .pcp(cpu: cpu, zone: zi, pindex: pindex, head: b.head, order: b.order)
  }

  /// The (CPU, list) holding the pcp block at `pfn`: the walk from the block towards both
  /// ends of its list at once reaches one end, which names the list.
  func findPcpList(_ zi: Int, _ pfn: Int, _ order: Int) -> (cpu: Int, pindex: Int)? {
    var a = UInt32(truncatingIfNeeded: pfn)
    var b = a
    var head = PageRecord.nilLink
    var tail = PageRecord.nilLink
    while true {
      let ra = memMap.presentRecord(Int(a))
      if ra.pointee.prev == PageRecord.nilLink {
        head = a
        break
      }
      let rb = memMap.presentRecord(Int(b))
      if rb.pointee.next == PageRecord.nilLink {
        tail = b
        break
      }
      a = ra.pointee.prev
      b = rb.pointee.next
    }
    for cpu in 0..<cpuCount {
      let pc = pcp(cpu &* zoneCount &+ zi)
      for li in 0..<PCPList.count where pindexToOrder(li) == order {
        let l = pc.pointee.lists[li]
        if (head != PageRecord.nilLink && l.head == head) || (tail != PageRecord.nilLink && l.tail == tail) {
          return (cpu, li)
        }
      }
    }
    return nil
  }

  /// Whether a request whose preferred zone is `zone` carries ALLOC_NOFRAGMENT in its
  /// first pass (``noFragmentFlags(_:)``).
  package func noFragmentFirst(zone zi: Int) -> Bool { noFragmentFlags(zones + zi).contains(.noFragment) }

  /// The block `__rmqueue(zone, order, migrateType)` would return now, and how it would
  /// find it (the requested type's smallest block, a claimed fallback block, a stolen
  /// one), or nil when it would find nothing: with ALLOC_NOFRAGMENT when `noFragment`,
  /// and in the mode a refill is in (`stealing`: an earlier block of the same refill was
  /// stolen). Follows ``rmqueue(_:_:_:_:_:)``; nothing moves.
  package func peekRmqueue(
    zone zi: Int, order: Int, migrateType mt: Int, noFragment: Bool = false, stealing: Bool = false
  ) -> RmqueuePeek? {
    let z = zones + zi
    z.pointee.lock.lock()
    defer { z.pointee.lock.unlock() }
    if !stealing, let p = peekSmallest(z, order, mt) { return p }
    if mt >= MigrateType.pcpTypes { return nil }
    if !stealing, let p = peekClaim(z, order, mt, noFragment) { return p }
    if !noFragment, let p = peekSteal(z, order, mt) { return p }
    return nil
  }

  /// ``rmqueueSmallest(_:_:_:)`` without taking the block.
  func peekSmallest(_ z: UnsafeMutablePointer<Zone>, _ order: Int, _ mt: Int) -> RmqueuePeek? {
    var o = order
    while o <= PageGeometry.maxOrder {
      let head = z.pointee.lists[listIndex(o, mt)].head
      if head != PageRecord.nilLink {
        return RmqueuePeek(pfn: Int(head), source: .smallest, blockOrder: o, blockType: mt)
      }
      o &+= 1
    }
    return nil
  }

  /// ``rmqueueClaim(_:_:_:_:)`` without claiming.
  func peekClaim(_ z: UnsafeMutablePointer<Zone>, _ order: Int, _ startMt: Int, _ noFragment: Bool) -> RmqueuePeek? {
    let fallbacks = MigrateType(rawValue: startMt)!.fallbacks
    var minOrder = order
    if order < PageGeometry.pageblockOrder && noFragment { minOrder = PageGeometry.pageblockOrder }
    var current = PageGeometry.maxOrder
    while current >= minOrder {
      if !canClaim(current, startMt) { break }
      for fb in fallbacks {
        let head = z.pointee.lists[listIndex(current, fb.rawValue)].head
        if head == PageRecord.nilLink { continue }
        if let p = peekTryClaim(z, Int(head), current, order, startMt, fb.rawValue) { return p }
        break
      }
      current -= 1
    }
    return nil
  }

  /// ``tryClaimBlock(_:_:_:_:_:_:)`` without claiming: the block it would return.
  func peekTryClaim(
    _ z: UnsafeMutablePointer<Zone>, _ pfn: Int, _ current: Int, _ order: Int, _ startMt: Int, _ blockMt: Int
  ) -> RmqueuePeek? {
    if current >= PageGeometry.pageblockOrder {
      return RmqueuePeek(pfn: pfn, source: .claim, blockOrder: current, blockType: blockMt)
    }
    let start = pfn & ~(PageGeometry.pageblockPages - 1)
    let end = start + PageGeometry.pageblockPages
    guard start >= z.pointee.start, end <= z.pointee.end else { return nil }
    let (free, movable) = pageblockFreeAndMovable(start, end)
    var alike = 0
    if startMt == MigrateType.movable.rawValue {
      alike = movable
    } else if blockMt == MigrateType.movable.rawValue {
      alike = PageGeometry.pageblockPages - free - movable
    }
    guard free + alike >= PageGeometry.pageblockPages / 2 else { return nil }
    // The pageblock's free blocks join the tails of startMt's lists; __rmqueue_smallest
    // then takes the head of the smallest non-empty list, which is one of them only where
    // the list was empty.
    var o = order
    while o <= PageGeometry.maxOrder {
      let head = z.pointee.lists[listIndex(o, startMt)].head
      if head != PageRecord.nilLink {
        return RmqueuePeek(pfn: Int(head), source: .claim, blockOrder: o, blockType: startMt)
      }
      if let m = firstFreeBlock(start, end, order: o) {
        return RmqueuePeek(pfn: m, source: .claim, blockOrder: o, blockType: startMt)
      }
      o &+= 1
    }
    return nil
  }

  /// The lowest free block of exactly `order` in `start..<end`: the first the claim's move
  /// puts on the list of that order.
  func firstFreeBlock(_ start: Int, _ end: Int, order: Int) -> Int? {
    var p = start
    while p < end {
      guard let r = memMap.record(p) else {
        p += 1
        continue
      }
      let w = r.pointee.flags.load(ordering: .relaxed)
      if w & PG.buddy == 0 {
        p += 1
        continue
      }
      if PG.order(w) == order { return p }
      p += 1 << PG.order(w)
    }
    return nil
  }

  /// ``rmqueueSteal(_:_:_:)`` without stealing.
  func peekSteal(_ z: UnsafeMutablePointer<Zone>, _ order: Int, _ startMt: Int) -> RmqueuePeek? {
    let fallbacks = MigrateType(rawValue: startMt)!.fallbacks
    for current in order...PageGeometry.maxOrder {
      for fb in fallbacks {
        let head = z.pointee.lists[listIndex(current, fb.rawValue)].head
        if head != PageRecord.nilLink {
          return RmqueuePeek(pfn: Int(head), source: .steal, blockOrder: current, blockType: fb.rawValue)
        }
      }
    }
    return nil
  }

  /// Runs `body` on a scratch copy of a pcp's figures (no lists), with `extraCount` pages
  /// added to its count: the real tuning functions answer without touching the pcp.
  func withScratchPcp<R>(
    _ pcp: UnsafeMutablePointer<PerCPUPages>, extraCount: Int, _ body: (UnsafeMutablePointer<PerCPUPages>) -> R
  ) -> R {
    let t = tuning(pcp)
    let scratch = UnsafeMutablePointer<PerCPUPages>.allocate(capacity: 1)
    scratch.initialize(
      to: PerCPUPages(
        lock: SpinLock(word: Atomic(0)), lists: pcp.pointee.lists, count: t.count &+ extraCount, high: t.high,
        highMin: t.highMin, highMax: t.highMax, batch: t.batch, freeCount: t.freeCount, allocFactor: t.allocFactor,
        prevFreeHighOrder: t.prevFreeHighOrder, freeHighBatch: pcp.pointee.freeHighBatch, pgalloc: 0, pgfree: 0,
        refills: 0, drains: 0))
    defer {
      scratch.deinitialize(count: 1)
      scratch.deallocate()
    }
    return body(scratch)
  }

  /// How many blocks of `order` a refill of `cpu`'s pcp for `zone` would take now
  /// (`nr_pcp_alloc()`), its count raised by `extraCount` pages the model cannot see.
  package func peekRefillCount(cpu: Int, zone zi: Int, order: Int, extraCount: Int = 0) -> Int {
    let pcp = pcp(cpu &* zoneCount &+ zi)
    pcp.pointee.lock.lock()
    defer { pcp.pointee.lock.unlock() }
    return withScratchPcp(pcp, extraCount: extraCount) { nrPcpAlloc($0, zones + zi, order) }
  }

  /// Where a drain starts: ``freePcppagesBulk(_:_:_:_:)`` is given a list and visits it
  /// first.
  package static func drainFirstList(from pindex: Int) -> Int { pindex }

  /// How many pages one `free_pcppages_bulk()` call of a commit drain may free
  /// (``freeCommitDrain(_:_:_:_:_:)``'s pieces): the pcp's batch.
  package func drainPieceSize(cpu: Int, zone zi: Int) -> Int {
    let pcp = pcp(cpu &* zoneCount &+ zi)
    pcp.pointee.lock.lock()
    defer { pcp.pointee.lock.unlock() }
    return pcp.pointee.batch
  }

  /// The block `free_pcppages_bulk()` would drain next from `cpu`'s pcp for `zone`: the
  /// tail of list `pindex` when `continuing` on it and it is not empty, otherwise the tail
  /// of the first non-empty list from `pindex` (when not continuing) or after it (when
  /// continuing), wrapping round. nil when every list is empty.
  package func peekDrainNext(cpu: Int, zone zi: Int, pindex: Int, continuing: Bool) -> (
    pfn: Int, order: Int, pindex: Int
  )? {
    let pcp = pcp(cpu &* zoneCount &+ zi)
    pcp.pointee.lock.lock()
    defer { pcp.pointee.lock.unlock() }
    var p = pindex
    if continuing {
      let t = pcp.pointee.lists[p].tail
      if t != PageRecord.nilLink { return (Int(t), pindexToOrder(p), p) }
      p = (p &+ 1) % PCPList.count
    }
    for _ in 0..<PCPList.count {
      let t = pcp.pointee.lists[p].tail
      if t != PageRecord.nilLink { return (Int(t), pindexToOrder(p), p) }
      p = (p &+ 1) % PCPList.count
    }
    return nil
  }

  /// The blocks a commit drain of `pages` starting at list `pindex` would free, in order
  /// (``freeCommitDrain(_:_:_:_:_:)``'s pieces of ``freePcppagesBulk(_:_:_:_:)`` walked on
  /// the lists as they are; `pieceSize` overrides the pieces' size, Int.max for one call),
  /// and the pages of the budget left unmet when the lists ran dry. `extraCount` pages the
  /// model cannot see count in the pcp's total.
  package func peekDrain(
    cpu: Int, zone zi: Int, pages: Int, pindex start: Int, extraCount: Int = 0, pieceSize: Int? = nil
  ) -> (blocks: [(pfn: Int, order: Int)], unmet: Int) {
    let piece = pieceSize ?? drainPieceSize(cpu: cpu, zone: zi)
    let pcp = pcp(cpu &* zoneCount &+ zi)
    pcp.pointee.lock.lock()
    defer { pcp.pointee.lock.unlock() }
    var tails = [UInt32](repeating: PageRecord.nilLink, count: PCPList.count)
    for i in 0..<PCPList.count { tails[i] = pcp.pointee.lists[i].tail }
    var total = pcp.pointee.count &+ extraCount
    var known = pcp.pointee.count
    var out: [(pfn: Int, order: Int)] = []
    var toFree = pages
    var unmet = 0
    while toFree > 0 && total > 0 {
      let budget = min(toFree, piece)
      // One free_pcppages_bulk() call.
      var count = min(budget, total)
      var pindex = PageAllocator.drainFirstList(from: start) &- 1
      while count > 0 && known > 0 {
        var tries = 0
        repeat {
          pindex = (pindex &+ 1) % PCPList.count
          tries &+= 1
        } while tails[pindex] == PageRecord.nilLink && tries <= PCPList.count
        if tails[pindex] == PageRecord.nilLink { break }
        let order = pindexToOrder(pindex)
        repeat {
          let pfn = Int(tails[pindex])
          tails[pindex] = memMap.presentRecord(pfn).pointee.prev
          out.append((pfn, order))
          count &-= 1 &<< order
          total &-= 1 &<< order
          known &-= 1 &<< order
        } while count > 0 && tails[pindex] != PageRecord.nilLink
      }
      if count > 0 {
        // The lists ran dry with budget left: pages the model cannot see.
        let hidden = min(count, max(total &- known, 0))
        unmet &+= hidden
        total &-= hidden
        if hidden == 0 { break }
      }
      toFree &-= budget
    }
    return (out, unmet)
  }

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
    var p = start
    while p < end {
      guard let r = memMap.record(p) else {
        p += 1
        continue
      }
      let w = r.pointee.flags.load(ordering: .relaxed)
      if w & PG.buddy != 0 {
        let o = PG.order(w)
        let from = memMap.freeListTypeRaw(p)
        if from != mt { moveFreeBlock(z, p, o, from: from, to: mt) }
        p += 1 << o
      } else {
        p += 1
      }
    }
    var b = start & ~(PageGeometry.pageblockPages - 1)
    while b < end {
      memMap.setMigrateType(b, MigrateType(rawValue: mt)!)
      b += PageGeometry.pageblockPages
    }
  }
}

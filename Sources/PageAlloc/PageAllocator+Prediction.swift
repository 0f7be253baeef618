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
  /// ends of its list at once reaches one end, which names the list (recently freed blocks
  /// sit near the head, so the walk is usually short). Used by the claim's unlink of a pcp
  /// block and by the prediction.
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
    guard let block = claimablePageblock(z, pfn, startMt, blockMt) else { return nil }
    // The pageblock's free blocks join the tails of startMt's lists; __rmqueue_smallest
    // then takes the head of the smallest non-empty list, which is one of them only where
    // the list was empty.
    var o = order
    while o <= PageGeometry.maxOrder {
      let head = z.pointee.lists[listIndex(o, startMt)].head
      if head != PageRecord.nilLink {
        return RmqueuePeek(pfn: Int(head), source: .claim, blockOrder: o, blockType: startMt)
      }
      if let m = firstFreeBlock(block.lowerBound, block.upperBound, order: o) {
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

}

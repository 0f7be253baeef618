import Glibc
import PageAlloc
import _PageAllocUtilities

// The prediction of allocations: pcp takes, refills and their size, and buddy takes.

extension PredictionEngine {
  // MARK: - Allocation

  func onAlloc(_ e: ReplayEvent, _ c: Int) throws(ReplayError) {
    let pfn = e.pfn
    let order = Int(e.order)
    let n = 1 << order
    let mt = Int(e.migrateType)
    let st = replay.state
    let off = pfn - zs
    if pendingBuddy.removeValue(forKey: pfn) != nil {
      for p in off..<(off + n) { st[p] = 1 &+ e.migrateType }
      replay.allocs += 1
      noteAlloc(pfn, mt)
      return
    }
    for p in off..<(off + n) where st[p] != 0 && st[p] != ReplayEngine.pcpHeld {
      try replay.anomaly(.allocBusy, e.line, "pfn \(PFN(pfn)) order \(order): page \(PFN(zs + p)) is not free")
      return
    }
    guard let zi = a.zoneIndex(of: pfn) else { return }
    if st[off] == ReplayEngine.pcpHeld { hidden[c] = max(0, hidden[c] - n) }
    let direct = cpus[c].direct == pfn
    cpus[c].direct = -1
    if PageAllocator.isPcpOrder(order) && mt < MigrateType.pcpTypes && !direct {
      let pindex = PageAllocator.pcpIndex(order: order, migrateType: mt)!
      if var head = a.pcpHead(cpu: c, zone: zi, pindex: pindex) {
        // mm_page_alloc is traced at the end of the allocation: an interrupt after the
        // block was taken (in the memcg charge, say) can free blocks onto the list first.
        // For an allocation in task context, the blocks interrupts freed since the CPU's
        // last task-context event were not there when it took its block.
        var late: [Int] = []
        if e.context == ReplayEvent.task && arrivedLate(head, c) {
          for b in a.pcpBlocks(cpu: c, zone: zi, pindex: pindex) {
            if !arrivedLate(b, c) {
              head = b
              break
            }
            late.append(b)
          }
        }
        if head == pfn {
          score(.pcpAlloc, order: order, hit: true, line: 0, kernel: "", model: "", reason: "")
        } else if late.count == a.pcpListLength(cpu: c, zone: zi, pindex: pindex) {
          // Only blocks freed after the allocation took its own: no prediction.
        } else {
          let place = a.place(of: pfn)
          let held = st[off] == ReplayEngine.pcpHeld
          score(
            .pcpAlloc, order: order, hit: false, line: Int(e.line), kernel: PredictionEngine.hex(pfn),
            model: PredictionEngine.hex(head), reason: pcpMissReason(place, held: held, cpu: c, pindex: pindex))
          learnFromPcpMiss(c, zi, pindex, pfn, place, keep: Set(late))
        }
      }
      a.shadowPcpAllocation(cpu: c, zone: zi, order: order)
    } else if !direct {
      let peek = peekTake(zi, order, mt, first: true, stealing: false)
      score(
        .buddyAlloc, order: order, hit: peek?.pfn == pfn, line: Int(e.line), kernel: PredictionEngine.hex(pfn),
        model: PredictionEngine.hex(peek?.pfn), reason: takeMissReason(pfn, peek))
      scoreSeen(.buddyAlloc, hit: peek?.pfn == pfn, seen: mark(pfn) & PredictionEngine.seen != 0)
    }
    take(pfn, n)
    for p in off..<(off + n) { st[p] = 1 &+ e.migrateType }
    replay.allocs += 1
    noteAlloc(pfn, mt)
  }

  /// Records an allocation's type; a pageblock whose type no event showed yet is guessed
  /// to have it (the kernel hands out pages of type `mt` from pageblocks of that type,
  /// but for the rare steal).
  func noteAlloc(_ pfn: Int, _ mt: Int) {
    marks[pfn - zs] = (marks[pfn - zs] & 0x0F) | UInt8(truncatingIfNeeded: (min(mt, 6) + 1) << 4)
    setMark(pfn, PredictionEngine.refillPlaced | PredictionEngine.freedOnPcp, false)
    if mt < MigrateType.pcpTypes && !isConfirmed(pfn) && a.migrateType(of: PFN(pfn))?.rawValue != mt {
      a.shadowSetPageblockType(pfn, mt)
      guessed += 1
    }
  }

  /// Takes `[pfn, pfn + n)` out of the model wherever it is free (pages already held
  /// allocated stay so).
  func take(_ pfn: Int, _ n: Int) {
    if a.claimFreeRange(pfn, count: n) == .claimed { return }
    var p = pfn
    while p < pfn + n {
      if a.place(of: p) != .allocated { _ = a.claimFreeRange(p, count: 1) }
      p += 1
    }
  }

  func pcpMissReason(_ place: BlockPlace, held: Bool, cpu: Int, pindex: Int) -> String {
    if held { return "the kernel's block was on its pcp list before the trace began" }
    switch place {
    case .pcp(let c, _, let li, _, _):
      if c != cpu { return "the model has the kernel's block on another CPU's list" }
      if li != pindex { return "the model has the kernel's block on another list (pageblock type)" }
      return "the model has blocks above the kernel's on the list that the kernel's list did not have"
    case .buddy: return "the model has the kernel's block in the buddy"
    case .allocated: return "the model holds the kernel's block as allocated"
    }
  }

  /// A pcp allocation missed: the kernel's list `pindex` had the kernel's block at its
  /// head, so the blocks the model has above it were elsewhere. Each moves to the list of
  /// another pageblock type (the type of its last allocation when that differs, else
  /// Unmovable, Reclaimable, Movable in turn), unless a traced refill put it there.
  /// Whether the pcp block at `b` was freed in an interrupt since `c`'s last task-context
  /// event.
  func arrivedLate(_ b: Int, _ c: Int) -> Bool {
    let m = mark(b)
    return m & PredictionEngine.freedOnPcp != 0 && m & PredictionEngine.freedInInterrupt != 0
      && Int(enqueued[b - zs]) > cpus[c].lastTask
  }

  func learnFromPcpMiss(_ c: Int, _ zi: Int, _ pindex: Int, _ pfn: Int, _ place: BlockPlace, keep: Set<Int>) {
    let blocks = a.pcpBlocks(cpu: c, zone: zi, pindex: pindex)
    var above = blocks[...]
    if case .pcp(let pc, _, let li, _, _) = place, pc == c, li == pindex, let k = blocks.firstIndex(of: pfn) {
      above = blocks[..<k]
    } else {
      // The kernel's block was not on this list in the model: the blocks whose type the
      // trace never showed go, from the head down to the first one it did.
      if case .pcp = place { learnType(pfn, PageAllocator.pcpType(pindex: pindex)) }
      var k = 0
      while k < blocks.count && !isConfirmed(blocks[k]) && mark(blocks[k]) & PredictionEngine.refillPlaced == 0 {
        k += 1
      }
      above = blocks[..<k]
    }
    for b in above where !keep.contains(b) { relocateOrVanish(b, c, zi, pindex) }
  }

  /// A block the trace showed was not on list `pindex` of `c` when the model had it there:
  /// one a traced refill put there left without an event of its own (the kernel hands
  /// out a few pages untraced) and is held allocated; any other had its pageblock type
  /// guessed wrong and moves to another type's list.
  func relocateOrVanish(_ pfn: Int, _ c: Int, _ zi: Int, _ pindex: Int) {
    if mark(pfn) & PredictionEngine.refillPlaced == 0 {
      relocate(pfn, c, zi, pindex)
      return
    }
    let order = PageAllocator.pcpOrder(pindex: pindex)
    guard a.claimFreeRange(pfn, count: 1 << order, account: false) == .claimed else { return }
    let st = replay.state
    for p in (pfn - zs)..<(pfn - zs + (1 << order)) { st[p] = 1 &+ ReplayEvent.unknownType }
    setMark(pfn, PredictionEngine.refillPlaced | PredictionEngine.freedOnPcp, false)
    vanished += 1
  }

  /// Moves a pcp block the trace showed was not on list `pindex` of `c` to another type's
  /// list of the same order, at its head; its pageblock takes that type unless the trace
  /// showed its type.
  func relocate(_ pfn: Int, _ c: Int, _ zi: Int, _ pindex: Int) {
    let order = PageAllocator.pcpOrder(pindex: pindex)
    let listType = PageAllocator.pcpType(pindex: pindex)
    var alt: Int
    if let t = lastAllocType(pfn), t < MigrateType.pcpTypes, t != listType {
      alt = t
    } else {
      alt = [MigrateType.unmovable.rawValue, MigrateType.reclaimable.rawValue, MigrateType.movable.rawValue]
        .first { $0 != listType }!
    }
    guard let target = PageAllocator.pcpIndex(order: order, migrateType: alt), target != pindex else { return }
    insertByTime(pfn, c, zi, target)
    relocated += 1
    if !isConfirmed(pfn), a.migrateType(of: PFN(pfn))?.rawValue != alt {
      a.shadowSetPageblockType(pfn, alt)
    }
  }

  // MARK: - Buddy takes

  func takeMissReason(_ pfn: Int, _ peek: RmqueuePeek?) -> String {
    guard let peek else { return "the model finds no block" }
    let kernelSeen = mark(pfn) & PredictionEngine.seen != 0
    let modelSeen = mark(peek.pfn) & PredictionEngine.seen != 0
    if !kernelSeen && !modelSeen {
      return "both blocks free since before the trace (their order in the free lists is unknown)"
    }
    if !kernelSeen { return "the kernel's block free since before the trace, the model's seen in it" }
    if !modelSeen { return "the model's block free since before the trace (it may not be free at all)" }
    return "both blocks seen in the trace: free-list order or split differs"
  }

  /// A block the kernel took from the buddy for `cpu`'s pcp (a zone_locked with
  /// percpu_refill=1, or an extfrag without one: a whole-block claim or a steal).
  func refillTake(_ e: ReplayEvent, _ c: Int, viaExtfrag: Bool) throws(ReplayError) {
    let pfn = e.pfn
    let order = Int(e.order)
    let mt = Int(e.migrateType)
    guard let zi = a.zoneIndex(of: pfn) else { return }
    let pindex = PageAllocator.pcpIndex(order: order, migrateType: mt)!
    if cpus[c].refill == nil {
      let begin = a.shadowRefillBegin(cpu: c, zone: zi, order: order, extraCount: hidden[c])
      cpus[c].refill = RefillBurst(
        zone: zi, order: order, mt: mt, pindex: pindex, predicted: begin.count, before: begin.before,
        stale: a.pcpBlocks(cpu: c, zone: zi, pindex: pindex))
    }
    let burst = cpus[c].refill!
    let peek = peekTake(zi, order, mt, first: burst.takes.isEmpty, stealing: burst.stealing)
    let reason = peek?.pfn == pfn ? "" : takeMissReason(pfn, peek)
    cpus[c].refill!.takes.append(
      Take(
        line: Int(e.line), pfn: pfn, order: order, model: peek, reason: reason,
        seen: mark(pfn) & PredictionEngine.seen != 0))
    if viaExtfrag {
      retype(e)
      // A steal puts the rest of the refill in steal mode; a claim back to normal.
      cpus[c].refill!.stealing = !e.changeOwnership
    } else {
      learnType(pfn, mt)
    }
    let st = replay.state
    let off = pfn - zs
    for p in off..<(off + (1 << order)) where st[p] != 0 {
      try replay.anomaly(
        .allocBusy, e.line, "refill of pfn \(PFN(pfn)) order \(order): page \(PFN(zs + p)) is not free")
      return
    }
    if a.shadowMoveToPcpTail(pfn, order: order, cpu: c, pindex: pindex) {
      setMark(pfn, PredictionEngine.refillPlaced, true)
      setMark(pfn, PredictionEngine.freedOnPcp, false)
    }
  }

  /// What `__rmqueue()` would return for a take: with ALLOC_NOFRAGMENT when the model's
  /// zone is where requests start with it, and, for the first block of a request, the
  /// retry without it when that finds nothing (`get_page_from_freelist()`'s second pass).
  func peekTake(_ zi: Int, _ order: Int, _ mt: Int, first: Bool, stealing: Bool) -> RmqueuePeek? {
    let noFragment = a.noFragmentFirst(zone: zi)
    if let p = a.peekRmqueue(zone: zi, order: order, migrateType: mt, noFragment: noFragment, stealing: stealing) {
      return p
    }
    guard noFragment && first else { return nil }
    return a.peekRmqueue(zone: zi, order: order, migrateType: mt)
  }

  /// A block the kernel took from the buddy for an allocation (rmqueue_buddy).
  func buddyTake(_ e: ReplayEvent, _ c: Int, viaExtfrag: Bool) throws(ReplayError) {
    let pfn = e.pfn
    let order = Int(e.order)
    let n = 1 << order
    let mt = Int(e.migrateType)
    guard let zi = a.zoneIndex(of: pfn) else { return }
    let peek = peekTake(zi, order, mt, first: true, stealing: false)
    score(
      .buddyAlloc, order: order, hit: peek?.pfn == pfn, line: Int(e.line), kernel: PredictionEngine.hex(pfn),
      model: PredictionEngine.hex(peek?.pfn), reason: takeMissReason(pfn, peek))
    scoreSeen(.buddyAlloc, hit: peek?.pfn == pfn, seen: mark(pfn) & PredictionEngine.seen != 0)
    if viaExtfrag { retype(e) } else { learnType(pfn, mt) }
    let st = replay.state
    let off = pfn - zs
    for p in off..<(off + n) where st[p] != 0 {
      try replay.anomaly(.allocBusy, e.line, "pfn \(PFN(pfn)) order \(order): page \(PFN(zs + p)) is not free")
      return
    }
    take(pfn, n)
    for p in off..<(off + n) { st[p] = 1 &+ e.migrateType }
    pendingBuddy[pfn] = c
  }

  /// An extfrag event's claim: the pageblocks it claimed take the requested type.
  func retype(_ e: ReplayEvent) {
    guard e.changeOwnership else { return }
    let mt = Int(e.migrateType)
    if e.fallbackOrder >= PageGeometry.pageblockOrder {
      let base = e.pfn & ~((1 << e.fallbackOrder) - 1)
      var p = base
      while p < base + (1 << e.fallbackOrder) {
        if p >= zs && p < ze { learnType(p, mt) }
        p += PageGeometry.pageblockPages
      }
    } else {
      learnType(e.pfn, mt)
    }
  }

  /// Scores a finished refill burst, or, when it was one block the CPU then allocated
  /// (rmqueue_buddy after a failed pcp trylock), that block as a buddy allocation.
  func finishRefill(_ c: Int, _ b: RefillBurst, next: ReplayEvent?) {
    if b.takes.count == 1, let e = next, e.kind == .alloc, e.pfn == b.takes[0].pfn {
      a.shadowRestoreTuning(cpu: c, zone: b.zone, b.before)
      let t = b.takes[0]
      score(
        .buddyAlloc, order: t.order, hit: t.model?.pfn == t.pfn, line: t.line, kernel: PredictionEngine.hex(t.pfn),
        model: PredictionEngine.hex(t.model?.pfn), reason: t.reason)
      scoreSeen(.buddyAlloc, hit: t.model?.pfn == t.pfn, seen: t.seen)
      cpus[c].direct = t.pfn
      return
    }
    for t in b.takes {
      score(
        .refill, order: t.order, hit: t.model?.pfn == t.pfn, line: t.line, kernel: PredictionEngine.hex(t.pfn),
        model: PredictionEngine.hex(t.model?.pfn), reason: t.reason)
      scoreSeen(.refill, hit: t.model?.pfn == t.pfn, seen: t.seen)
    }
    let k = b.takes.count
    score(
      .refillCount, order: b.order, hit: k == b.predicted, line: b.takes[0].line, kernel: "\(k) blocks",
      model: "\(b.predicted) blocks",
      reason: k < b.predicted
        ? "the kernel took fewer blocks than nr_pcp_alloc gives the model"
        : "the kernel took more blocks than the model")
    // The kernel refills only an empty list: what the model had on it was elsewhere.
    let taken = Set(b.takes.map(\.pfn))
    for s in b.stale where !taken.contains(s) { relocateOrVanish(s, c, b.zone, b.pindex) }
  }

}

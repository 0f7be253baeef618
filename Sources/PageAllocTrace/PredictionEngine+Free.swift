import Glibc
import PageAlloc
import _PageAllocUtilities

// The prediction of frees: where a freed block goes, and the drains that follow; the report.

extension PredictionEngine {
  // MARK: - Frees and drains

  func onFree(_ e: ReplayEvent, _ c: Int, batched: Bool) throws(ReplayError) {
    let pfn = e.pfn
    let order = Int(e.order)
    let n = 1 << order
    let st = replay.state
    let off = pfn - zs
    for p in off..<(off + n) where st[p] == 0 || st[p] == ReplayEngine.pcpHeld {
      try replay.anomaly(.doubleFree, e.line, "pfn \(PFN(pfn)) order \(order): page \(PFN(zs + p)) is already free")
      return
    }
    for p in off..<(off + n) { st[p] = 0 }
    if batched {
      pendingBatched[c << 32 | pfn] = order
    } else {
      commit(c, pfn, order, Int(e.line), e.context)
    }
  }

  /// The kernel put a freed block on `c`'s pcp (or the buddy): the model's commit runs
  /// without draining, and its drain decision waits for the CPU's next event.
  func commit(_ c: Int, _ pfn: Int, _ order: Int, _ line: Int, _ context: UInt8) {
    replay.frees += 1
    setMark(pfn, PredictionEngine.refillPlaced | PredictionEngine.freedOnPcp, false)
    // The model must hold the block as allocated, as the replay's own record does.
    guard a.place(of: pfn) == .allocated else { return }
    guard let r = a.shadowFreeToPcp(pfn, order: order, cpu: c, extraCount: hidden[c]) else { return }
    setMark(pfn, PredictionEngine.freedOnPcp, true)
    setMark(pfn, PredictionEngine.freedInInterrupt, context != ReplayEvent.task)
    enqueued[pfn - zs] = Int32(truncatingIfNeeded: now)
    var pages = 0
    if r.toFree > 0 {
      let d = a.peekDrain(cpu: c, zone: r.zone, pages: r.toFree, pindex: r.pindex, extraCount: hidden[c])
      pages = d.blocks.reduce(0) { $0 + (1 << $1.order) } + d.unmet
    }
    cpus[c].commit = Commit(line: line, order: order, zone: r.zone, pindex: r.pindex, pages: pages)
  }

  func onDrain(_ e: ReplayEvent, _ c: Int) {
    let pfn = e.pfn
    let order = Int(e.order)
    let mt = Int(e.migrateType)
    guard let zi = a.zoneIndex(of: pfn) else { return }
    if cpus[c].drain == nil {
      // A drain right after a free is that free's commit drain, from the list freed to;
      // any other (decay_pcp_high, drain_all_pages) starts at list 0.
      let commit = cpus[c].commit
      let start = commit?.pindex ?? 0
      cpus[c].drain = DrainBurst(
        zone: zi, start: start, cursor: PageAllocator.drainFirstList(from: start), commit: commit, line: Int(e.line),
        order: commit?.order ?? order)
      cpus[c].commit = nil
    }
    var b = cpus[c].drain!
    if b.piecePages >= a.drainPieceSize(cpu: c, zone: zi) {
      b.cursor = PageAllocator.drainFirstList(from: b.start)
      b.continuing = false
      b.piecePages = 0
    }
    let next = a.peekDrainNext(cpu: c, zone: zi, pindex: b.cursor, continuing: b.continuing)
    let st = replay.state
    let held = st[pfn - zs] == ReplayEngine.pcpHeld
    if next?.pfn == pfn {
      score(.drain, order: order, hit: true, line: 0, kernel: "", model: "", reason: "")
    } else {
      let place = a.place(of: pfn)
      var reason: String
      if held {
        reason = "the kernel's block was on its pcp list before the trace began"
      } else if next == nil {
        reason = "the model's pcp lists are empty"
      } else if case .pcp(let pc, _, let li, _, _) = place {
        reason =
          pc != c
          ? "the model has the kernel's block on another CPU's list"
          : li == next!.pindex
            ? "same list, another block (list order)" : "another list (where the walk starts or goes next)"
      } else {
        reason = "the model does not have the kernel's block on a pcp list"
      }
      score(
        .drain, order: order, hit: false, line: Int(e.line), kernel: PredictionEngine.hex(pfn),
        model: PredictionEngine.hex(next?.pfn), reason: reason)
    }
    let before = a.migrateType(of: PFN(pfn))?.rawValue
    let r = a.shadowDrain(pfn, order: order, migrateType: mt)
    if before != mt && mt < MigrateType.isolate.rawValue { retyped += 1 }
    let i = pageblockIndex(pfn)
    if i >= 0 && i < confirmed.count && mt < MigrateType.isolate.rawValue { confirmed[i] = true }
    switch r {
    case .fromPcp(_, let li):
      b.cursor = li
    case .fromAllocated, .alreadyFree:
      if held { hidden[c] = max(0, hidden[c] - (1 << order)) }
      b.cursor = PageAllocator.pcpIndex(order: order, migrateType: mt) ?? b.cursor
    }
    for p in (pfn - zs)..<(pfn - zs + (1 << order)) where st[p] == ReplayEngine.pcpHeld { st[p] = 0 }
    setMark(pfn, PredictionEngine.refillPlaced | PredictionEngine.freedOnPcp, false)
    b.continuing = true
    b.piecePages += 1 << order
    b.pages += 1 << order
    cpus[c].drain = b
  }

  func finishDrain(_ d: DrainBurst) {
    if d.commit != nil { a.shadowCommitDrainFinished(zone: d.zone) }
    guard let cm = d.commit else {
      score(
        .drainTiming, order: d.order, hit: false, line: d.line, kernel: "\(d.pages) pages", model: "no drain",
        reason: "a drain after no free (decay_pcp_high or drain_all_pages, not modelled)")
      return
    }
    let reason =
      cm.pages == 0
      ? "the kernel drains after this free, the model does not"
      : cm.pages < d.pages ? "both drain, the model fewer pages" : "both drain, the model more pages"
    score(
      .drainTiming, order: cm.order, hit: cm.pages == d.pages, line: cm.line, kernel: "\(d.pages) pages",
      model: cm.pages == 0 ? "no drain" : "\(cm.pages) pages", reason: reason)
  }

  // MARK: - Report

  func report() -> PredictionReport {
    let totals = scores.map { row in
      row.reduce(PredictionReport.Score()) {
        PredictionReport.Score(predicted: $0.predicted + $1.predicted, hits: $0.hits + $1.hits)
      }
    }
    var cls: [PredictionReport.MissClass] = []
    for d in PredictedDecision.allCases {
      for (r, n) in (classes[d] ?? [:]).sorted(by: { $0.value > $1.value || ($0.value == $1.value && $0.key < $1.key) })
      {
        cls.append(PredictionReport.MissClass(kind: d, reason: r, count: n))
      }
    }
    let header = replay.parsed.headerCPUs
    return PredictionReport(
      scores: totals, byOrder: scores, seenScores: seenScores, missClasses: cls, misses: misses,
      baseline: baseline.score,
      cpuCount: cpuCount,
      cpuSource: header != nil && header! >= replay.parsed.maxCPU + 1
        ? "the trace header's #P:" : "the highest CPU in the trace",
      tuningSource: tuningSource, pageblocksRetyped: retyped, blocksRelocated: relocated,
      pretracePcpPages: replay.pretracePcpPages, unnamedPages: replay.unnamed, blocksGoneUntraced: vanished,
      pageblocksGuessed: guessed, hasZoneLocked: replay.hasZoneLocked, hasDrains: hasDrains)
  }
}

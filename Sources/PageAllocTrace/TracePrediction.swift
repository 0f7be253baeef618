import Glibc
import PageAlloc
import _PageAllocUtilities

/// The prediction: the replay engine's zone and first pass, the kernel's events applied
/// through the model's shadow moves, each decision asked of the model first.
final class PredictionEngine {
  let replay: ReplayEngine
  let a: PageAllocator
  let cpuCount: Int
  let zs: Int
  let ze: Int

  struct Commit {
    var line: Int
    var order: Int
    var zone: Int
    var pindex: Int
    /// Pages the model would drain after this free (0: none).
    var pages: Int
  }
  struct Take {
    var line: Int
    var pfn: Int
    var order: Int
    var model: RmqueuePeek?
    var reason: String
    /// Whether an earlier event had shown the kernel's block.
    var seen: Bool
  }
  struct RefillBurst {
    var zone: Int
    var order: Int
    var mt: Int
    var pindex: Int
    var predicted: Int
    var before: PcpTuning
    var stale: [Int]
    var takes: [Take] = []
    /// The refill's `__rmqueue()` mode: a block of it was stolen, the next ones are too.
    var stealing = false
  }
  struct DrainBurst {
    var zone: Int
    var start: Int
    var cursor: Int
    var continuing = false
    var piecePages = 0
    var pages = 0
    var commit: Commit?
    var line: Int
    var order: Int
  }
  struct CPUState {
    var lastKind: ReplayEvent.Kind?
    var lastPfn = -1
    var refill: RefillBurst?
    var drain: DrainBurst?
    var commit: Commit?
    /// A pcp-order allocation the trace showed went past the pcp (rmqueue_buddy).
    var direct = -1
    /// The index of the CPU's last event traced in task context.
    var lastTask = -1
  }

  var cpus: [CPUState]
  /// Pages on each CPU's pcp that the model cannot see (zoneinfo's count at the start,
  /// less the pre-trace blocks that left since).
  var hidden: [Int]
  /// Per pfn of the zone: bit 0 placed on its pcp list by a traced refill; bit 1 seen in
  /// an event already; bit 2 put on its pcp list by a free; bits 4-7: 1 + the migratetype
  /// of its last allocation.
  let marks: UnsafeMutablePointer<UInt8>
  /// Per pfn of the zone: the index of the event that freed it onto a pcp list (for a
  /// block with bit 2 of its mark): a block's place among a list's frees, newest first.
  let enqueued: UnsafeMutablePointer<Int32>
  /// The event being applied.
  var now = 0
  /// Per pageblock of the zone: its type was shown by an event.
  var confirmed: [Bool]
  /// Event indices of mm_page_free lines whose page is committed later by an
  /// mm_page_free_batched line (free_unref_folios traces every page of a batch first).
  var batchedFrees: [Bool]
  /// (cpu << 32 | pfn) -> order of a batched free awaiting its commit.
  var pendingBatched: [Int: Int] = [:]
  /// Blocks a traced buddy allocation took, awaiting their mm_page_alloc: pfn -> CPU.
  var pendingBuddy: [Int: Int] = [:]

  var scores = [[PredictionReport.Score]](
    repeating: [PredictionReport.Score](repeating: .init(), count: PageGeometry.orderCount),
    count: PredictedDecision.allCases.count)
  var seenScores = [PredictionReport.Score](repeating: .init(), count: PredictedDecision.allCases.count)
  var classes: [PredictedDecision: [String: Int]] = [:]
  var misses: [PredictionReport.Miss] = []
  var retyped = 0
  var relocated = 0
  var vanished = 0
  var guessed = 0
  var baseline = LIFOBaseline()
  let tuningSource: String
  let hasDrains: Bool
  let debugMisses = getenv("PAGEALLOC_PREDICT_DEBUG") != nil

  init(replay: ReplayEngine, snapshot: PcpSnapshot?, snapshotName: String?) {
    self.replay = replay
    a = replay.allocator
    cpuCount = replay.cpuCount
    zs = replay.zoneStart
    ze = replay.zoneEnd
    cpus = [CPUState](repeating: CPUState(), count: cpuCount)
    hidden = [Int](repeating: 0, count: cpuCount)
    marks = .allocate(capacity: ze - zs)
    marks.initialize(repeating: 0, count: ze - zs)
    enqueued = .allocate(capacity: ze - zs)
    enqueued.initialize(repeating: 0, count: ze - zs)
    confirmed = [Bool](
      repeating: false, count: (ze - zs + PageGeometry.pageblockPages - 1) / PageGeometry.pageblockPages)
    let events = replay.parsed.events
    batchedFrees = [Bool](repeating: false, count: events.count)
    hasDrains = events.contains { $0.kind == .drain }
    var lastFree: [Int: Int] = [:]
    for (i, e) in events.enumerated() {
      let key = Int(e.cpu) << 32 | e.pfn
      if e.kind == .free {
        lastFree[key] = i
      } else if e.kind == .freeBatched, let j = lastFree.removeValue(forKey: key) {
        batchedFrees[j] = true
      }
    }
    if let snap = snapshot {
      for cpu in 0..<min(cpuCount, snap.cpus.count) {
        let c = snap.cpus[cpu]
        for zi in 0..<a.configuration.zones.count {
          a.shadowSetTuning(cpu: cpu, zone: zi, high: c.high, highMin: c.highMin, highMax: c.highMax, batch: c.batch)
        }
        hidden[cpu] = c.count
      }
      tuningSource =
        "\(snapshotName ?? "zoneinfo") (zone \(snap.zone): high, batch, high_min, high_max and the pages already on each pcp)"
    } else {
      tuningSource = "the model's own for this zone (no zoneinfo of the traced machine)"
    }
  }

  deinit {
    marks.deallocate()
    enqueued.deallocate()
  }

  // MARK: - Scoring

  func score(
    _ d: PredictedDecision, order: Int, hit: Bool, line: Int, kernel: @autoclosure () -> String,
    model: @autoclosure () -> String, reason: @autoclosure () -> String
  ) {
    let i = PredictedDecision.allCases.firstIndex(of: d)!
    scores[i][order].predicted += 1
    if hit {
      scores[i][order].hits += 1
      return
    }
    let r = reason()
    if debugMisses { printError("MISS \(line) \(d.rawValue) o\(order) kernel \(kernel()) model \(model()) \(r)") }
    classes[d, default: [:]][r, default: 0] += 1
    if misses.count < 20 {
      misses.append(PredictionReport.Miss(line: line, kind: d, kernel: kernel(), model: model(), reason: r))
    }
  }

  /// The same decision counted again when an earlier event had shown the kernel's block.
  func scoreSeen(_ d: PredictedDecision, hit: Bool, seen: Bool) {
    guard seen else { return }
    let i = PredictedDecision.allCases.firstIndex(of: d)!
    seenScores[i].predicted += 1
    if hit { seenScores[i].hits += 1 }
  }

  static func hex(_ pfn: Int?) -> String { pfn.map { "0x" + String($0, radix: 16) } ?? "none" }

  // MARK: - Per-pfn marks

  @inline(__always) func mark(_ pfn: Int) -> UInt8 { marks[pfn - zs] }
  @inline(__always) func setMark(_ pfn: Int, _ bit: UInt8, _ on: Bool) {
    if on { marks[pfn - zs] |= bit } else { marks[pfn - zs] &= ~bit }
  }
  static let refillPlaced: UInt8 = 1
  static let seen: UInt8 = 2
  static let freedOnPcp: UInt8 = 4
  static let freedInInterrupt: UInt8 = 8
  func lastAllocType(_ pfn: Int) -> Int? {
    let v = Int(marks[pfn - zs] >> 4)
    return v == 0 ? nil : v - 1
  }
  func pageblockIndex(_ pfn: Int) -> Int {
    (pfn - (zs & ~(PageGeometry.pageblockPages - 1))) >> PageGeometry.pageblockOrder
  }

  /// The trace showed the pageblock of `pfn` has type `mt`: the model's pageblock takes
  /// it, and the blocks of that pageblock that frees put on another type's pcp list (when
  /// the type was guessed) move to this type's list, each at its place among its frees.
  func learnType(_ pfn: Int, _ mt: Int) {
    guard mt < MigrateType.isolate.rawValue else { return }
    let i = pageblockIndex(pfn)
    let wasConfirmed = i >= 0 && i < confirmed.count && confirmed[i]
    if i >= 0 && i < confirmed.count { confirmed[i] = true }
    let changed = a.migrateType(of: PFN(pfn))?.rawValue != mt
    if changed {
      a.shadowSetPageblockType(pfn, mt)
      retyped += 1
    }
    if changed || !wasConfirmed { movePcpBlocks(ofPageblock: pfn, toType: mt) }
  }

  /// Moves the blocks of `pfn`'s pageblock that frees put on a pcp list of another type
  /// than `mt` to `mt`'s list of their order, on the same CPU.
  func movePcpBlocks(ofPageblock pfn: Int, toType mt: Int) {
    let base = max(pfn & ~(PageGeometry.pageblockPages - 1), zs)
    let end = min(base + PageGeometry.pageblockPages, ze)
    var p = base
    while p < end {
      if mark(p) & PredictionEngine.freedOnPcp != 0,
        case .pcp(let cpu, let zi, let li, let head, let order) = a.place(of: p),
        head == p, PageAllocator.pcpType(pindex: li) != mt,
        let target = PageAllocator.pcpIndex(order: order, migrateType: mt), target != li
      {
        insertByTime(p, cpu, zi, target)
        relocated += 1
      }
      p += 1
    }
  }

  /// Moves a pcp block freed at `enqueued[pfn]` to list `target` of `cpu`: below the
  /// blocks frees put there later, above everything older (the list is LIFO).
  func insertByTime(_ pfn: Int, _ cpu: Int, _ zi: Int, _ target: Int) {
    let t = mark(pfn) & PredictionEngine.freedOnPcp != 0 ? enqueued[pfn - zs] : -1
    var prev: Int?
    for b in a.pcpBlocks(cpu: cpu, zone: zi, pindex: target) {
      guard b != pfn, mark(b) & PredictionEngine.freedOnPcp != 0, enqueued[b - zs] > t else { break }
      prev = b
    }
    a.shadowMovePcpBlock(pfn, cpu: cpu, pindex: target, position: prev.map { .after($0) } ?? .head)
  }

  func isConfirmed(_ pfn: Int) -> Bool {
    let i = pageblockIndex(pfn)
    return i >= 0 && i < confirmed.count && confirmed[i]
  }

  // MARK: - The run

  func run() throws(ReplayError) {
    let events = replay.parsed.events
    let sampler = replay.sampler
    for i in events.indices {
      let e = events[i]
      if let sampler {
        replay.currentIndex = i
        sampler.observe(i)
      }
      if e.kind == .malformed {
        try replay.anomaly(.malformed, e.line, replay.parsed.malformedReasons[e.pfn])
        continue
      }
      let n = 1 << Int(e.order)
      if e.pfn < zs || e.pfn + n > ze {
        try replay.anomaly(
          .outOfRange, e.line, "pfn \(PFN(e.pfn)) order \(e.order) is outside the zone \(PFN(zs))-\(PFN(ze))")
        continue
      }
      let c = Int(e.cpu) % cpuCount
      now = i
      close(c, next: e)
      baseline.observe(e, cpu: c)
      switch e.kind {
      case .alloc: try onAlloc(e, c)
      case .free: try onFree(e, c, batched: batchedFrees[i])
      case .freeBatched:
        if let order = pendingBatched.removeValue(forKey: c << 32 | e.pfn) {
          commit(c, e.pfn, order, Int(e.line), e.context)
        }
      case .drain: onDrain(e, c)
      case .zoneLocked:
        if e.percpuRefill && PageAllocator.isPcpOrder(Int(e.order)) && Int(e.migrateType) < MigrateType.pcpTypes {
          try refillTake(e, c, viaExtfrag: false)
        } else {
          try buddyTake(e, c, viaExtfrag: false)
        }
      case .extfrag:
        if cpus[c].lastKind == .zoneLocked && cpus[c].lastPfn == e.pfn {
          retype(e)  // a partial claim: its zone_locked took the block already
        } else if PageAllocator.isPcpOrder(Int(e.order)) && Int(e.migrateType) < MigrateType.pcpTypes {
          try refillTake(e, c, viaExtfrag: true)
        } else {
          try buddyTake(e, c, viaExtfrag: true)
        }
      case .malformed: break
      }
      setMark(e.pfn, PredictionEngine.seen, true)
      cpus[c].lastKind = e.kind
      cpus[c].lastPfn = e.pfn
      if e.context == ReplayEvent.task { cpus[c].lastTask = i }
    }
    for c in 0..<cpuCount { close(c, next: nil) }
  }

  /// Ends the bursts of `cpu` that `next` (the CPU's next event, nil at the end) does not
  /// continue: a refill is scored, a drain burst is scored, and a free the kernel did not
  /// drain after is scored against the model's drain.
  func close(_ c: Int, next: ReplayEvent?) {
    if let b = cpus[c].refill {
      var continues = false
      if let e = next, Int(e.order) == b.order, Int(e.migrateType) == b.mt {
        continues = (e.kind == .zoneLocked && e.percpuRefill) || e.kind == .extfrag
      }
      if !continues {
        finishRefill(c, b, next: next)
        cpus[c].refill = nil
      }
    }
    if next?.kind != .drain {
      if let d = cpus[c].drain {
        finishDrain(d)
        cpus[c].drain = nil
      }
      if let cm = cpus[c].commit {
        if cm.pages > 0 {
          score(
            .drainTiming, order: cm.order, hit: false, line: cm.line, kernel: "no drain", model: "\(cm.pages) pages",
            reason: "the model drains after this free, the kernel does not")
          // The kernel's high was above its count: the model learns that bound.
          a.shadowLearnHighAbove(cpu: c, zone: cm.zone, extraCount: hidden[c])
        }
        cpus[c].commit = nil
      }
    }
  }

}

import Glibc
import PageAlloc
import _PageAllocUtilities

/// A decision of the kernel's page allocator that `pagealloc replay --predict` asks the
/// model to predict.
public enum PredictedDecision: String, CaseIterable, Sendable {
  /// An `mm_page_alloc` of a pcp order whose list in the model holds a block: the block
  /// `rmqueue_pcplist()` takes (the list head).
  case pcpAlloc = "pcp_alloc"
  /// Each block a pcp refill takes from the buddy (`rmqueue_bulk()` calling `__rmqueue()`).
  case refill = "refill"
  /// Per refill: the number of blocks (`nr_pcp_alloc()`).
  case refillCount = "refill_count"
  /// Each `mm_page_pcpu_drain`: the block `free_pcppages_bulk()` drains next on that CPU.
  case drain = "drain"
  /// Per drain burst, the kernel's or the model's: whether both drain after the same free,
  /// and the same number of pages.
  case drainTiming = "drain_timing"
  /// An allocation served from the buddy (orders without a pcp list, or a pcp order that
  /// went past the pcp): the block `__rmqueue()` returns.
  case buddyAlloc = "buddy_alloc"
}

/// The figures of a prediction (`pagealloc replay --predict`): each decision's predicted
/// and hit counts, by order, the misses by class, the first misses, and what the
/// prediction learnt about the machine's state as it went.
public struct PredictionReport: Sendable {
  public struct Score: Sendable, Hashable {
    public var predicted: Int = 0
    public var hits: Int = 0
    public var rate: Double { predicted > 0 ? Double(hits) / Double(predicted) : 0 }
    public init(predicted: Int = 0, hits: Int = 0) {
      self.predicted = predicted
      self.hits = hits
    }
  }

  /// One miss: the trace line, what the kernel chose and what the model would have.
  public struct Miss: Sendable, Hashable {
    public var line: Int
    public var kind: PredictedDecision
    public var kernel: String
    public var model: String
    /// The miss's class (see ``PredictionReport/missClasses``).
    public var reason: String
  }

  /// How many misses of a decision fall in one class.
  public struct MissClass: Sendable, Hashable {
    public var kind: PredictedDecision
    public var reason: String
    public var count: Int
  }

  /// One per decision, in the order of `PredictedDecision.allCases`.
  public var scores: [Score]
  /// `byOrder[decision][order]`, orders 0...10.
  public var byOrder: [[Score]]
  /// For the buddy decisions (refill, buddy_alloc): the decisions whose block an earlier
  /// event had shown, the ones the model can know the place of (others are 0).
  public var seenScores: [Score]
  /// Every miss class, by decision, largest first.
  public var missClasses: [MissClass]
  /// The first 20 misses.
  public var misses: [Miss]
  /// A plain LIFO stack per (CPU, order, migratetype) on the same trace (LIFOBaseline.swift):
  /// its pcp allocation figure, for comparison.
  public var baseline: Score
  public var cpuCount: Int
  /// Where the CPU count came from.
  public var cpuSource: String
  /// Where the pcp tuning (high, batch) came from.
  public var tuningSource: String
  /// Pageblocks whose type the model changed to the one the trace showed.
  public var pageblocksRetyped: Int
  /// pcp blocks moved to another list when the trace showed they were not where the model
  /// had them.
  public var blocksRelocated: Int
  /// Pages found (first pass) on the kernel's pcp lists when the trace began.
  public var pretracePcpPages: Int
  /// Pages of the zone no event names, held allocated.
  public var unnamedPages: Int
  /// pcp blocks a traced refill put on a list that left it with no event (found when the
  /// kernel took a block below them, or refilled the list): held allocated.
  public var blocksGoneUntraced: Int
  /// Pageblock types guessed from an allocation's migratetype before any event showed
  /// them.
  public var pageblocksGuessed: Int
  /// Whether the trace has mm_page_alloc_zone_locked and mm_page_pcpu_drain events.
  public var hasZoneLocked: Bool
  public var hasDrains: Bool

  public func score(_ d: PredictedDecision) -> Score { scores[PredictedDecision.allCases.firstIndex(of: d)!] }

  static func percent(_ s: Score) -> String { s.predicted > 0 ? fixed(s.rate * 100, 2) + "%" : "-" }

  /// The section `pagealloc replay --predict` prints.
  public var text: String {
    var s = "prediction (each kernel decision asked of the model first, then applied as the kernel made it):\n"
    s += "  CPUs: \(cpuCount) (\(cpuSource)); pcp tuning: \(tuningSource)\n"
    if !hasZoneLocked {
      s += "  the trace has no mm_page_alloc_zone_locked events: refills and buddy allocations are not scored\n"
    }
    s +=
      "  " + padRight("decision", 14) + pad("predicted", 10) + pad("hits", 10) + pad("rate", 9)
      + "   by order (hits/predicted)\n"
    for (i, d) in PredictedDecision.allCases.enumerated() {
      let sc = scores[i]
      var line = "  " + padRight(d.rawValue, 14) + pad(String(sc.predicted), 10) + pad(String(sc.hits), 10)
      line += pad(PredictionReport.percent(sc), 9) + "   "
      line += byOrder[i].enumerated().filter { $0.element.predicted > 0 }
        .map { "o\($0.offset) \($0.element.hits)/\($0.element.predicted)" }.joined(separator: ", ")
      s += line + "\n"
    }
    let rs = seenScores[PredictedDecision.allCases.firstIndex(of: .refill)!]
    let bs = seenScores[PredictedDecision.allCases.firstIndex(of: .buddyAlloc)!]
    s +=
      "  on blocks an earlier event had shown: refill \(rs.hits)/\(rs.predicted) \(PredictionReport.percent(rs)), buddy_alloc \(bs.hits)/\(bs.predicted) \(PredictionReport.percent(bs))\n"
    s +=
      "  LIFO baseline (a stack per CPU, order and migratetype) on pcp allocations: \(baseline.hits)/\(baseline.predicted) \(PredictionReport.percent(baseline))\n"
    s +=
      "  learnt: \(pageblocksRetyped) pageblock types from the trace (\(pageblocksGuessed) guessed from allocations first), \(blocksRelocated) pcp blocks moved to another list, \(blocksGoneUntraced) gone from their list untraced, \(pretracePcpPages) pages on pcp lists before the trace; \(unnamedPages) pages no event names held allocated\n"
    if !missClasses.isEmpty {
      s += "  misses by class:\n"
      for c in missClasses {
        s += "    " + padRight(c.kind.rawValue, 13) + pad(String(c.count), 8) + "  " + c.reason + "\n"
      }
    }
    if !misses.isEmpty {
      s += "  first \(misses.count) misses:\n"
      for m in misses {
        s += "    line \(m.line): \(m.kind.rawValue): kernel \(m.kernel), model \(m.model) (\(m.reason))\n"
      }
    }
    return s
  }

  /// The `"prediction"` object of `pagealloc replay --predict --json`.
  public var json: String {
    // The issue's shape first (each decision's predicted and hits, the misses with line,
    // kind, kernel and model), then the rest as further keys.
    var s = "{\n"
    for (i, d) in PredictedDecision.allCases.enumerated() {
      s += "    \"\(d.rawValue)\": {\"predicted\": \(scores[i].predicted), \"hits\": \(scores[i].hits)},\n"
    }
    s +=
      "    \"misses\": ["
      + misses.map {
        "{\"line\": \($0.line), \"kind\": \"\($0.kind.rawValue)\", \"kernel\": \(jsonString($0.kernel)), \"model\": \(jsonString($0.model))}"
      }.joined(separator: ", ") + "],\n"
    s += "    \"miss_reasons\": [" + misses.map { jsonString($0.reason) }.joined(separator: ", ") + "],\n"
    s += "    \"by_order\": {\n"
    s += PredictedDecision.allCases.enumerated().map { (i, d) in
      let orders = byOrder[i].enumerated().filter { $0.element.predicted > 0 }
        .map { "\"\($0.offset)\": {\"predicted\": \($0.element.predicted), \"hits\": \($0.element.hits)}" }
        .joined(separator: ", ")
      return "      \"\(d.rawValue)\": {\(orders)}"
    }.joined(separator: ",\n")
    s += "\n    },\n"
    for d in [PredictedDecision.refill, .buddyAlloc] {
      let sc = seenScores[PredictedDecision.allCases.firstIndex(of: d)!]
      s += "    \"\(d.rawValue)_seen_blocks\": {\"predicted\": \(sc.predicted), \"hits\": \(sc.hits)},\n"
    }
    s += "    \"lifo_baseline\": {\"predicted\": \(baseline.predicted), \"hits\": \(baseline.hits)},\n"
    s += "    \"cpus\": \(cpuCount),\n"
    s += "    \"pageblocks_retyped\": \(pageblocksRetyped),\n"
    s += "    \"blocks_relocated\": \(blocksRelocated),\n"
    s += "    \"pretrace_pcp_pages\": \(pretracePcpPages),\n"
    s += "    \"unnamed_pages\": \(unnamedPages),\n"
    s += "    \"blocks_gone_untraced\": \(blocksGoneUntraced),\n"
    s += "    \"pageblocks_guessed\": \(pageblocksGuessed),\n"
    s +=
      "    \"miss_classes\": ["
      + missClasses.map {
        "{\"kind\": \"\($0.kind.rawValue)\", \"reason\": \(jsonString($0.reason)), \"count\": \($0.count)}"
      }.joined(separator: ", ") + "]\n"
    s += "  }"
    return s
  }
}

/// The pcp tuning of the traced machine when the trace began, from its /proc/zoneinfo:
/// per CPU the pcp's count, high, batch, high_min and high_max of one zone.
public struct PcpSnapshot: Sendable, Hashable {
  public struct CPU: Sendable, Hashable {
    public var count: Int
    public var high: Int
    public var batch: Int
    public var highMin: Int
    public var highMax: Int
  }
  public var zone: String
  public var startPFN: Int
  public var spanned: Int
  public var cpus: [CPU]

  /// The pagesets of the zone of `text` (a /proc/zoneinfo) that holds `pfn`, or nil.
  public static func parse(zoneinfo text: String, holding pfn: Int) -> PcpSnapshot? {
    var zones: [PcpSnapshot] = []
    var current: PcpSnapshot?
    var cpu: CPU?
    func flushCPU() {
      if let c = cpu { current?.cpus.append(c) }
      cpu = nil
    }
    for raw in text.split(separator: "\n", omittingEmptySubsequences: false) {
      let line = raw.trimmingPrefix(" ")
      let words = line.split(separator: " ", omittingEmptySubsequences: true)
      if raw.hasPrefix("Node ") {
        flushCPU()
        if let z = current { zones.append(z) }
        current = PcpSnapshot(zone: words.last.map(String.init) ?? "", startPFN: -1, spanned: 0, cpus: [])
        continue
      }
      guard words.count >= 2 else { continue }
      let value = Int(words[words.count - 1])
      switch words[0] {
      case "spanned": if let value { current?.spanned = value }
      case "start_pfn:": if let value { current?.startPFN = value }
      case "cpu:":
        flushCPU()
        cpu = CPU(count: 0, high: 0, batch: 1, highMin: 0, highMax: 0)
      case "count:": if let value { cpu?.count = value }
      case "high:": if let value { cpu?.high = value }
      case "batch:": if let value { cpu?.batch = value }
      case "high_min:": if let value { cpu?.highMin = value }
      case "high_max:": if let value { cpu?.highMax = value }
      case "vm", "node_unreclaimable:": flushCPU()
      default: break
      }
    }
    flushCPU()
    if let z = current { zones.append(z) }
    return zones.first { pfn >= $0.startPFN && pfn < $0.startPFN + $0.spanned && !$0.cpus.isEmpty }
  }
}

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

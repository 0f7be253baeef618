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
    // The shape first (each decision's predicted and hits, the misses with line,
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

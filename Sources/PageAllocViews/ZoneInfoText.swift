// Reading /proc/zoneinfo back: the kernel's text (`zoneinfo_show_print()` in mm/vmstat.c),
// as a 6.18 kernel or the 2026 tree prints it, or as `zoneInfo()` prints it.

import PageAlloc

/// A /proc/zoneinfo text, parsed: every zone of every node, with the numbers the kernel
/// prints for it.
public struct ZoneInfoText: Sendable, Hashable {
  /// One CPU's pageset of a zone.
  public struct PageSet: Sendable, Hashable {
    public var cpu: Int
    public var count: Int
    public var high: Int
    public var batch: Int
    public var highMin: Int
    public var highMax: Int
    /// `vm stats threshold`, printed after each CPU's pageset.
    public var statThreshold: Int?
  }

  /// One zone of one node.
  public struct Zone: Sendable, Hashable {
    public var node: Int
    /// The name as printed: "DMA", "DMA32", "Normal", "HighMem", "Movable", "Device".
    public var name: String
    public var pagesFree = 0
    public var boost = 0
    public var min = 0
    public var low = 0
    public var high = 0
    public var promo = 0
    public var spanned = 0
    public var present = 0
    public var managed = 0
    public var cma = 0
    /// lowmem_reserve, one entry per zone kind of the kernel.
    public var protection: [Int] = []
    /// The per-node stats (printed with the node's first populated zone), in order.
    public var nodeStats: [(name: String, value: Int)] = []
    /// The zone (and NUMA) stats, in order.
    public var stats: [(name: String, value: Int)] = []
    public var pagesets: [PageSet] = []
    public var nodeUnreclaimable: Int?
    /// zone_start_pfn: printed for populated zones only.
    public var startPFN: Int?
    /// The 2026 tree's last two lines; nil for kernels that do not print them (6.18).
    public var reservedHighatomic: Int?
    public var freeHighatomic: Int?

    /// The zone kind of the name, or nil for HighMem (32-bit machines only).
    public var kind: ZoneKind? { ZoneKind.allCases.first { $0.description == name } }
    /// Whether the kernel printed the populated part (stats, pagesets, start_pfn).
    public var populated: Bool { startPFN != nil }

    public static func == (a: Zone, b: Zone) -> Bool {
      a.node == b.node && a.name == b.name && a.pagesFree == b.pagesFree && a.boost == b.boost && a.min == b.min
        && a.low == b.low && a.high == b.high && a.promo == b.promo && a.spanned == b.spanned
        && a.present == b.present && a.managed == b.managed && a.cma == b.cma && a.protection == b.protection
        && a.nodeStats.elementsEqual(b.nodeStats, by: { $0 == $1 })
        && a.stats.elementsEqual(b.stats, by: { $0 == $1 }) && a.pagesets == b.pagesets
        && a.nodeUnreclaimable == b.nodeUnreclaimable && a.startPFN == b.startPFN
        && a.reservedHighatomic == b.reservedHighatomic && a.freeHighatomic == b.freeHighatomic
    }

    public func hash(into h: inout Hasher) {
      h.combine(node)
      h.combine(name)
      h.combine(startPFN)
      h.combine(spanned)
    }
  }

  public var zones: [Zone]

  /// A line that does not fit the format: its number (1-based) and what was wrong.
  public struct ParseError: Error, Sendable, Equatable, CustomStringConvertible {
    public var line: Int
    public var message: String
    public var description: String { "line \(line): \(message)" }
  }

  /// Parses the text of /proc/zoneinfo. Every line must be one the kernel prints: a zone
  /// header, a `name value` line of a known section, a pageset line, or a blank line.
  public init(parsing text: String) throws(ParseError) {
    var zones: [Zone] = []
    var section = Section.none
    var lineNumber = 0
    for raw in text.split(separator: "\n", omittingEmptySubsequences: false) {
      lineNumber += 1
      let line = raw.hasSuffix("\r") ? raw.dropLast() : raw[...]
      if line.allSatisfy({ $0 == " " }) { continue }
      func fail(_ why: String) -> ParseError { ParseError(line: lineNumber, message: why) }
      func int(_ s: Substring) throws(ParseError) -> Int {
        guard let v = Int(s) else { throw fail("'\(s)' is not a number") }
        return v
      }
      if line.hasPrefix("Node ") {
        // "Node 0, zone   Normal"
        let rest = line.dropFirst(5)
        guard let comma = rest.firstIndex(of: ","), rest[comma...].hasPrefix(", zone ") else {
          throw fail("expected 'Node N, zone NAME'")
        }
        let node = try int(rest[..<comma])
        let name = rest[rest.index(comma, offsetBy: 7)...].drop { $0 == " " }
        guard !name.isEmpty, !name.contains(" ") else { throw fail("expected a zone name after 'zone'") }
        zones.append(Zone(node: node, name: String(name)))
        section = .header
        continue
      }
      guard !zones.isEmpty else { throw fail("text before the first 'Node N, zone NAME' line") }
      let indent = line.prefix { $0 == " " }.count
      let body = line.dropFirst(indent)
      let words = body.split(separator: " ", omittingEmptySubsequences: true)
      var z = zones.removeLast()
      defer { zones.append(z) }
      switch (indent, words.first ?? "") {
      case (2, "per-node"):
        section = .nodeStats
      case (2, "pages"):
        guard words.count == 3, words[1] == "free" else { throw fail("expected 'pages free N'") }
        z.pagesFree = try int(words[2])
        section = .header
      case (8, "protection:"):
        guard body.hasPrefix("protection: ("), body.hasSuffix(")") else {
          throw fail("expected 'protection: (a, b, ...)'")
        }
        let inner = body.dropFirst("protection: (".count).dropLast()
        var values: [Int] = []
        for part in inner.split(separator: ",") { values.append(try int(part.drop { $0 == " " })) }
        z.protection = values
        section = .stats
      case (8, let key):
        guard words.count == 2 else { throw fail("expected '\(key) N'") }
        let v = try int(words[1])
        switch key {
        case "boost": z.boost = v
        case "min": z.min = v
        case "low": z.low = v
        case "high": z.high = v
        case "promo": z.promo = v
        case "spanned": z.spanned = v
        case "present": z.present = v
        case "managed": z.managed = v
        case "cma": z.cma = v
        default: throw fail("unknown zone field '\(key)'")
        }
      case (6, let key) where section == .nodeStats || section == .stats:
        guard words.count == 2 else { throw fail("expected '\(key) N'") }
        let v = try int(words[1])
        if section == .nodeStats { z.nodeStats.append((String(key), v)) } else { z.stats.append((String(key), v)) }
      case (2, "pagesets"):
        section = .pagesets
      case (4, "cpu:") where section == .pagesets:
        guard words.count == 2 else { throw fail("expected 'cpu: N'") }
        z.pagesets.append(PageSet(cpu: try int(words[1]), count: 0, high: 0, batch: 0, highMin: 0, highMax: 0))
      case (14, let key) where section == .pagesets && !z.pagesets.isEmpty:
        guard words.count == 2 else { throw fail("expected '\(key) N'") }
        let v = try int(words[1])
        switch key {
        case "count:": z.pagesets[z.pagesets.count - 1].count = v
        case "high:": z.pagesets[z.pagesets.count - 1].high = v
        case "batch:": z.pagesets[z.pagesets.count - 1].batch = v
        case "high_min:": z.pagesets[z.pagesets.count - 1].highMin = v
        case "high_max:": z.pagesets[z.pagesets.count - 1].highMax = v
        default: throw fail("unknown pageset field '\(key)'")
        }
      case (2, "vm") where section == .pagesets && !z.pagesets.isEmpty:
        guard words.count == 4, words[1] == "stats", words[2] == "threshold:" else {
          throw fail("expected 'vm stats threshold: N'")
        }
        z.pagesets[z.pagesets.count - 1].statThreshold = try int(words[3])
      case (2, let key) where words.count == 2 && key.hasSuffix(":"):
        let v = try int(words[1])
        switch key {
        case "node_unreclaimable:": z.nodeUnreclaimable = v
        case "start_pfn:": z.startPFN = v
        case "reserved_highatomic:": z.reservedHighatomic = v
        case "free_highatomic:": z.freeHighatomic = v
        default: throw fail("unknown zone field '\(key.dropLast())'")
        }
        section = .tail
      default:
        throw fail("unexpected line '\(line.prefix(60))'")
      }
    }
    self.zones = zones
  }

  private enum Section { case none, nodeStats, header, stats, pagesets, tail }
}

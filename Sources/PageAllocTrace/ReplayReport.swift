import PageAlloc
import _PageAllocUtilities

/// An input error of a trace replay: `FILE:LINE: reason` (or `FILE: reason`).
public struct ReplayError: Error, CustomStringConvertible, Sendable {
  public var file: String
  /// 1-based line, when the error has one.
  public var line: Int?
  public var reason: String

  public init(file: String, line: Int?, reason: String) {
    self.file = file
    self.line = line
    self.reason = reason
  }

  public var description: String {
    if let line { return "\(file):\(line): \(reason)" }
    return "\(file): \(reason)"
  }
}

/// What went wrong with one event of a replayed trace.
public enum ReplayAnomaly: String, CaseIterable, Sendable {
  /// An allocation names a page that is not free: the event is skipped.
  case allocBusy = "alloc-busy"
  /// A free names a page that is already free: the event is skipped.
  case doubleFree = "double-free"
  /// An event names a page outside every zone: skipped.
  case outOfRange = "out-of-range"
  /// A line names mm_page_alloc or mm_page_free but does not parse.
  case malformed = "malformed"
}

/// The figures of one replay (`pagealloc replay`).
public struct ReplayReport: Sendable {
  public struct AnomalyCount: Sendable, Hashable {
    public var kind: ReplayAnomaly
    public var count: Int
    /// The first five line numbers.
    public var firstLines: [Int]
  }

  public var file: String
  public var linesRead: Int
  /// Allocations and frees that took effect.
  public var eventsApplied: Int
  public var allocsApplied: Int
  public var freesApplied: Int
  /// Lines that are not an event we use (headers, other events, mm_page_free_batched).
  public var linesIgnored: Int
  /// mm_page_alloc lines of failed allocations (page=0/pfn=0), skipped.
  public var allocFailures: Int
  /// mm_page_alloc and mm_page_free lines that parsed (applied or not).
  public var eventsParsed: Int
  /// Pages whose first event is a free: allocated before the trace began.
  public var preallocatedPages: Int
  /// In ReplayAnomaly.allCases order.
  public var anomalies: [AnomalyCount]
  public var zones: [ZoneConfiguration]
  public var cpuCount: Int
  /// /proc/buddyinfo after drainAllPages().
  public var buddyInfo: String
  /// nr_free per order 0...10 for each zone.
  public var buddyCounts: [[Int]]
  /// Per pageblock of the zone: the pages still allocated at the end, by the migratetype
  /// of their mm_page_alloc line (0...5; index 6: unknown). For `FragmentationMap`.
  public var allocatedByType: [[Int]]
  /// Reading (and inflating) the file.
  public var readSeconds: Double
  /// Parsing the bytes into events.
  public var parseSeconds: Double
  /// Building the allocator, the first pass and the pre-trace allocations.
  public var setupSeconds: Double
  /// Applying the events, then draining the pcp lists.
  public var replaySeconds: Double
  /// The prediction's figures (`--predict`).
  public var prediction: PredictionReport?
  /// The free memory over trace time (`--timeline`).
  public var timeline: ReplayTimeline?

  /// Everything but the file read: parse + setup + replay.
  public var processSeconds: Double { parseSeconds + setupSeconds + replaySeconds }
  public var totalSeconds: Double { readSeconds + processSeconds }
  /// mm_page_alloc/mm_page_free events per second of parse + setup + replay.
  public var eventsPerSecond: Double { processSeconds > 0 ? Double(eventsParsed) / processSeconds : 0 }

  public func count(_ k: ReplayAnomaly) -> Int { anomalies.first { $0.kind == k }?.count ?? 0 }

  /// The report `pagealloc replay` prints.
  public var text: String {
    var s = "replay of \(file)\n"
    s += "lines read:          \(linesRead)\n"
    s += "events applied:      \(eventsApplied) (\(allocsApplied) allocs, \(freesApplied) frees)\n"
    s += "lines ignored:       \(linesIgnored)\n"
    s += "failed allocations:  \(allocFailures) (page=0, skipped)\n"
    s += "pre-trace pages:     \(preallocatedPages) (first event a free: allocated before the trace)\n"
    for a in anomalies {
      s += padRight(a.kind.rawValue + ":", 21) + "\(a.count)"
      if !a.firstLines.isEmpty { s += " (lines " + a.firstLines.map(String.init).joined(separator: ", ") + ")" }
      s += "\n"
    }
    for z in zones {
      s += "zone \(z.kind): pfns \(z.pfns.lowerBound)-\(z.pfns.upperBound) (\(z.pfns.count) pages), \(cpuCount) CPUs\n"
    }
    s += "/proc/buddyinfo after drainAllPages():\n" + buddyInfo
    s +=
      "time: \(fixed(totalSeconds * 1000, 1)) ms (read \(fixed(readSeconds * 1000, 1)), parse \(fixed(parseSeconds * 1000, 1)), setup \(fixed(setupSeconds * 1000, 1)), replay \(fixed(replaySeconds * 1000, 1)))\n"
    s += "events per second:   \(Int(eventsPerSecond.rounded())) (\(eventsParsed) events / parse+setup+replay)\n"
    if let prediction { s += prediction.text }
    return s
  }

  /// The same figures as JSON; `buddyinfo` is an array of 11 counts per zone.
  public var json: String {
    var s = "{\n"
    s += "  \"file\": \(jsonString(file)),\n"
    s += "  \"lines_read\": \(linesRead),\n"
    s += "  \"events_applied\": \(eventsApplied),\n"
    s += "  \"allocs_applied\": \(allocsApplied),\n"
    s += "  \"frees_applied\": \(freesApplied),\n"
    s += "  \"lines_ignored\": \(linesIgnored),\n"
    s += "  \"failed_allocations\": \(allocFailures),\n"
    s += "  \"events_parsed\": \(eventsParsed),\n"
    s += "  \"pretrace_pages\": \(preallocatedPages),\n"
    s += "  \"anomalies\": {\n"
    s += anomalies.map {
      "    \"\($0.kind.rawValue)\": {\"count\": \($0.count), \"first_lines\": [\($0.firstLines.map(String.init).joined(separator: ", "))]}"
    }.joined(separator: ",\n")
    s += "\n  },\n"
    s +=
      "  \"zones\": ["
      + zones.map {
        "{\"name\": \"\($0.kind)\", \"start_pfn\": \($0.pfns.lowerBound.value), \"end_pfn\": \($0.pfns.upperBound.value)}"
      }.joined(separator: ", ") + "],\n"
    s += "  \"cpus\": \(cpuCount),\n"
    s +=
      "  \"buddyinfo\": ["
      + buddyCounts.map { "[" + $0.map(String.init).joined(separator: ", ") + "]" }
      .joined(separator: ", ") + "],\n"
    s +=
      "  \"seconds\": {\"total\": \(totalSeconds), \"read\": \(readSeconds), \"parse\": \(parseSeconds), \"setup\": \(setupSeconds), \"replay\": \(replaySeconds)},\n"
    s += "  \"events_per_second\": \(eventsPerSecond.rounded())"
    if let prediction { s += ",\n  \"prediction\": " + prediction.json }
    s += "\n}\n"
    return s
  }
}

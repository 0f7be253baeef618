import PageAlloc
import CPageAllocGzip
import _PageAllocUtilities
import CPageAllocShim
import Glibc

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

/// Replays a kernel kmem trace into a fresh allocator (backing `.none`).
///
/// Semantics:
/// 1. Used: `mm_page_alloc` (pfn, order; failures with page=0/pfn=0 skipped) and
///    `mm_page_free` (pfn, order). `mm_page_free_batched` accompanies an `mm_page_free` of
///    the same page and is not a second free. Every other line is ignored and counted.
/// 2. Memory: one Normal zone from the lowest pfn of the trace rounded down to 1024 to the
///    highest block end rounded up to 1024, unless a zone is given.
/// 3. A first pass marks every page whose first event is a free as allocated before the
///    trace began (order-0 pages, claimed before the replay starts); all others start free.
/// 4. An alloc claims exactly its pages wherever they are free (a pcp list, or inside a
///    larger buddy block, split as needed) with `PageAllocator.claimFreeRange(_:count:)`;
///    a page that is not free is the anomaly `alloc-busy` and the event is skipped. A free
///    releases its pages through the normal free path on the pcp of the CPU named in the
///    line (`freePages(_:order: 0)` for one page, `freeContigRange` for a block, which frees
///    an aligned block as one block); a page already free is `double-free`, and the event is
///    skipped. Claimed pages are order-0 pages with refcount 1, so the pages of one
///    high-order allocation may be freed one by one, as real traces do. A page outside the
///    zone is `out-of-range`; a used line that does not parse is `malformed`.
/// 5. At the end, `drainAllPages()`.
public enum TraceReplay {
  public struct Options: Sendable {
    /// The zone's pfns (`--zone START-END`); nil: derived from the trace.
    public var zone: Range<PFN>?
    /// Stop at the first anomaly with a ``ReplayError``.
    public var strict: Bool
    /// Predict each kernel decision before applying it (``PredictionReport``).
    public var predict: Bool
    /// The traced machine's /proc/zoneinfo at the start, for the prediction's pcp tuning;
    /// nil: `STEM.zoneinfo-before.txt` beside the trace when it exists.
    public var zoneinfo: String?
    /// Sample the free memory over trace time (``ReplayTimeline``).
    public var timeline: Bool
    /// Predictions: take the pages no event names as free at the start (true when the
    /// trace began on an empty zone, as the model's own traces do); by default they are
    /// held allocated.
    public var unnamedFree: Bool
    public init(
      zone: Range<PFN>? = nil, strict: Bool = false, predict: Bool = false, zoneinfo: String? = nil,
      timeline: Bool = false, unnamedFree: Bool = false
    ) {
      self.zone = zone
      self.strict = strict
      self.predict = predict
      self.zoneinfo = zoneinfo
      self.timeline = timeline
      self.unnamedFree = unnamedFree
    }

    /// Whether the parse must keep every kmem event and the timestamps.
    var detailed: Bool { predict || timeline }
  }

  /// The files a recording writes beside its trace share the trace's stem: the path less
  /// `.gz`, then less `.trace` or `.txt` (`x.trace.gz` -> `x`, then `x.zoneinfo-before.txt`).
  public static func companionStem(of path: String) -> String {
    var s = Substring(path)
    if s.hasSuffix(".gz") { s = s.dropLast(3) }
    if s.hasSuffix(".trace") { s = s.dropLast(6) } else if s.hasSuffix(".txt") { s = s.dropLast(4) }
    return String(s)
  }

  /// Largest zone a replay builds without `--zone` (2^27 pages = 512 GiB; the replay keeps
  /// two bytes per page besides the page records).
  public static let maxDerivedZonePages = 1 << 27

  /// Reads `path` and replays it. A plain file is mapped and parsed in place; a gzip file
  /// is inflated with zlib in 1 MiB pieces, each parsed at once, so memory stays bounded
  /// by the events, not the text, and the text is read while it is still in cache.
  public static func run(path: String, options: Options = Options()) throws(ReplayError) -> (
    report: ReplayReport, allocator: PageAllocator
  ) {
    var err = [CChar](repeating: 0, count: 256)
    func message() -> String { String(decoding: err.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) }
    let gz = cpa_file_is_gzip(path, &err, err.count)
    if gz < 0 { throw ReplayError(file: path, line: nil, reason: message()) }
    if gz == 0 {
      let t0 = monotonicNanoseconds()
      return try withFileBytes(path: path) { (bytes) throws(ReplayError) in
        let readSeconds = Double(monotonicNanoseconds() &- t0) / 1e9
        return try run(bytes: bytes, name: path, options: options, readSeconds: readSeconds)
      }
    }
    guard let h = cpa_gz_open(path, &err, err.count) else {
      throw ReplayError(file: path, line: nil, reason: message())
    }
    defer { cpa_gz_close(h) }
    var cap = 1 << 20
    var buf = UnsafeMutablePointer<UInt8>.allocate(capacity: cap)
    defer { buf.deallocate() }
    var carry = 0
    var parsed = ParsedTrace(detailed: options.detailed)
    parsed.events.reserveCapacity(1 << 16)
    var readNs: UInt64 = 0
    var parseNs: UInt64 = 0
    while true {
      let t0 = monotonicNanoseconds()
      let got = cpa_gz_read(h, buf + carry, cap - carry, &err, err.count)
      let t1 = monotonicNanoseconds()
      readNs &+= t1 &- t0
      if got < 0 {
        // Name the line the data stopped in.
        var line = parsed.linesRead + 1
        for i in 0..<carry where buf[i] == 0x0A { line += 1 }
        throw ReplayError(file: path, line: line, reason: message())
      }
      if got == 0 {
        KmemTraceParser.feed(UnsafeRawBufferPointer(start: buf, count: carry), &parsed)
        parseNs &+= monotonicNanoseconds() &- t1
        break
      }
      let total = carry + got
      var last = total - 1
      while last >= 0 && buf[last] != 0x0A { last -= 1 }
      guard last >= 0 else {
        carry = total
        if carry == cap {
          // One line longer than the buffer: grow it.
          let bigger = UnsafeMutablePointer<UInt8>.allocate(capacity: cap * 2)
          bigger.update(from: buf, count: carry)
          buf.deallocate()
          buf = bigger
          cap *= 2
        }
        continue
      }
      let whole = last + 1
      KmemTraceParser.feed(UnsafeRawBufferPointer(start: buf, count: whole), &parsed)
      carry = total - whole
      if carry > 0 { memmove(buf, buf + whole, carry) }
      parseNs &+= monotonicNanoseconds() &- t1
    }
    return try replay(
      parsed: parsed, name: path, options: options, readSeconds: Double(readNs) / 1e9,
      parseSeconds: Double(parseNs) / 1e9)
  }

  /// Calls `body` with the bytes of `path`, inflated when it is gzip (zlib's gzread).
  /// A missing or unreadable file, or a corrupt or truncated gzip stream, is a
  /// ``ReplayError`` naming the line the data stopped in.
  static func withFileBytes<R>(
    path: String, _ body: (UnsafeRawBufferPointer) throws(ReplayError) -> R
  ) throws(ReplayError) -> R {
    var raw: UnsafeMutablePointer<UInt8>?
    var len = 0
    var cap = 0
    var err = [CChar](repeating: 0, count: 256)
    let rc = cpa_read_maybe_gzip(path, &raw, &len, &cap, &err, err.count)
    defer { cpa_free_file_bytes(raw, cap) }
    if rc != 0 {
      let msg = String(decoding: err.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
      var line: Int?
      if let raw, len > 0 {
        var n = 1
        for i in 0..<len where raw[i] == 0x0A { n += 1 }
        line = n
      }
      throw ReplayError(file: path, line: line, reason: msg)
    }
    return try body(UnsafeRawBufferPointer(start: raw, count: len))
  }

  /// Replays trace text held in memory; `name` is used in messages.
  public static func run(
    bytes: UnsafeRawBufferPointer, name: String, options: Options = Options(), readSeconds: Double = 0
  ) throws(ReplayError) -> (report: ReplayReport, allocator: PageAllocator) {
    let t0 = monotonicNanoseconds()
    let parsed = KmemTraceParser.parse(bytes, detailed: options.detailed)
    let t1 = monotonicNanoseconds()
    return try replay(
      parsed: parsed, name: name, options: options, readSeconds: readSeconds, parseSeconds: Double(t1 &- t0) / 1e9)
  }

  /// Builds the zone and applies the parsed events.
  static func replay(
    parsed: ParsedTrace, name: String, options: Options, readSeconds: Double, parseSeconds: Double
  ) throws(ReplayError) -> (report: ReplayReport, allocator: PageAllocator) {
    let t1 = monotonicNanoseconds()
    let engine = try ReplayEngine(parsed: parsed, name: name, options: options, holdPcpResidents: options.predict)
    if options.timeline { engine.sampler = TimelineSampler(allocator: engine.allocator, parsed: parsed) }
    let t2 = monotonicNanoseconds()
    var prediction: PredictionReport?
    var timeline: ReplayTimeline?
    if options.predict {
      let (snapshot, snapshotName) = try zoneinfoSnapshot(name: name, options: options, zoneStart: engine.zoneStart)
      let p = PredictionEngine(replay: engine, snapshot: snapshot, snapshotName: snapshotName)
      try p.run()
      timeline = engine.sampler?.finish()
      engine.allocator.drainAllPages()
      prediction = p.report()
    } else {
      try engine.apply()
      timeline = engine.sampler?.finish()
      engine.allocator.drainAllPages()
    }
    let t3 = monotonicNanoseconds()
    let a = engine.allocator
    let stats = a.zoneStatistics()
    let report = ReplayReport(
      file: name, linesRead: parsed.linesRead, eventsApplied: engine.allocs + engine.frees,
      allocsApplied: engine.allocs, freesApplied: engine.frees, linesIgnored: parsed.linesIgnored,
      allocFailures: parsed.allocFailures, eventsParsed: engine.eventsParsed,
      preallocatedPages: engine.preallocated,
      anomalies: ReplayAnomaly.allCases.enumerated().map {
        ReplayReport.AnomalyCount(
          kind: $0.element, count: engine.anomalyCounts[$0.offset], firstLines: engine.anomalyLines[$0.offset])
      },
      zones: a.configuration.zones, cpuCount: a.configuration.cpuCount,
      buddyInfo: stats.filter { $0.present > 0 }
        .map { buddyInfoLine(zone: $0.kind.description, counts: $0.freeBlocks) }.joined(),
      buddyCounts: stats.map(\.freeBlocks), allocatedByType: engine.allocatedByType(), readSeconds: readSeconds,
      parseSeconds: parseSeconds, setupSeconds: Double(t2 &- t1) / 1e9,
      replaySeconds: Double(t3 &- t2) / 1e9, prediction: prediction, timeline: timeline)
    return (report, a)
  }

  /// The pcp snapshot for a prediction: `--zoneinfo FILE`, or the zoneinfo a recording
  /// left beside the trace, or none.
  static func zoneinfoSnapshot(name: String, options: Options, zoneStart: Int) throws(ReplayError) -> (
    PcpSnapshot?, String?
  ) {
    let path = options.zoneinfo ?? (companionStem(of: name) + ".zoneinfo-before.txt")
    guard let text = try? readTextFile(path) else {
      if options.zoneinfo != nil { throw ReplayError(file: path, line: nil, reason: "cannot read the zoneinfo file") }
      return (nil, nil)
    }
    guard let snap = PcpSnapshot.parse(zoneinfo: text, holding: zoneStart) else {
      if options.zoneinfo != nil {
        throw ReplayError(file: path, line: nil, reason: "no zone with pagesets holds pfn \(PFN(zoneStart))")
      }
      return (nil, nil)
    }
    return (snap, path)
  }

  /// Parses `start-end` (decimal or 0x hex pfns) as a zone range.
  public static func parseZone(_ s: String) -> Range<PFN>? {
    let parts = s.split(separator: "-", omittingEmptySubsequences: false)
    guard parts.count == 2 else { return nil }
    func num(_ t: Substring) -> Int? {
      let t = t.trimmingPrefix(" ")
      if t.hasPrefix("0x") || t.hasPrefix("0X") { return Int(t.dropFirst(2), radix: 16) }
      return Int(t)
    }
    guard let a = num(parts[0]), let b = num(parts[1]), a >= 0, b > a, b < KmemTraceParser.pfnLimit else { return nil }
    return PFN(a)..<PFN(b)
  }
}

/// The state of one replay.
final class ReplayEngine {
  let parsed: ParsedTrace
  let name: String
  let strict: Bool
  let allocator: PageAllocator
  let zoneStart: Int
  let zoneEnd: Int
  let cpuCount: Int
  /// One byte per pfn of the zone: 0 free, else allocated, as 1 + the allocation's
  /// migratetype from the trace (8: unknown, e.g. allocated before the trace).
  let state: UnsafeMutablePointer<UInt8>
  var allocs = 0
  var frees = 0
  var preallocated = 0
  var eventsParsed = 0
  /// The ``state`` of a page a prediction's first pass found on a pcp list when the trace
  /// began (held out of the buddy, free for an allocation or a drain).
  static let pcpHeld: UInt8 = 9
  /// Pages a detailed first pass found on pcp lists when the trace began.
  var pretracePcpPages = 0
  /// Pages of the zone no event names (held allocated in a prediction).
  var unnamed = 0
  /// Whether the trace has `mm_page_alloc_zone_locked` events (without them a first
  /// allocation says nothing about where the page came from).
  let hasZoneLocked: Bool
  /// Whether the first pass holds the pre-trace pcp pages (a prediction) or leaves them
  /// free (a replay, which claims pages wherever they are free).
  let holdPcpResidents: Bool
  /// Whether a prediction leaves the pages no event names free.
  let unnamedFree: Bool
  /// The timeline being sampled (`--timeline`), and the event being applied.
  var sampler: TimelineSampler?
  var currentIndex = 0
  var anomalyCounts = [Int](repeating: 0, count: ReplayAnomaly.allCases.count)
  var anomalyLines = [[Int]](repeating: [], count: ReplayAnomaly.allCases.count)

  init(parsed: ParsedTrace, name: String, options: TraceReplay.Options, holdPcpResidents: Bool = false)
    throws(ReplayError)
  {
    self.holdPcpResidents = holdPcpResidents
    unnamedFree = options.unnamedFree
    self.parsed = parsed
    self.name = name
    strict = options.strict
    hasZoneLocked = parsed.events.contains { $0.kind == .zoneLocked }
    // The zone.
    var lo = Int.max
    var hi = Int.min
    var loLine = 0
    var hiLine = 0
    var nEvents = 0
    for e in parsed.events where e.kind != .malformed {
      nEvents += 1
      if e.pfn < lo {
        lo = e.pfn
        loLine = Int(e.line)
      }
      let end = e.pfn &+ (1 &<< Int(e.order))
      if end > hi {
        hi = end
        hiLine = Int(e.line)
      }
    }
    eventsParsed = nEvents
    if let z = options.zone {
      zoneStart = z.lowerBound.value
      zoneEnd = z.upperBound.value
    } else {
      guard lo <= hi else {
        throw ReplayError(
          file: name, line: nil,
          reason: "no mm_page_alloc or mm_page_free event to replay (\(parsed.linesRead) lines read)")
      }
      zoneStart = lo & ~1023
      zoneEnd = (hi &+ 1023) & ~1023
      if zoneEnd - zoneStart > TraceReplay.maxDerivedZonePages {
        throw ReplayError(
          file: name, line: hiLine,
          reason:
            "pfns span \(PFN(zoneStart))-\(PFN(zoneEnd)) (lowest on line \(loLine)), more than 2^27 pages; give --zone START-END"
        )
      }
    }
    // The CPUs of the ftrace header's #P:, or the highest CPU seen.
    cpuCount = min(max(parsed.headerCPUs ?? 0, parsed.maxCPU + 1), 256)
    do {
      allocator = try PageAllocator(
        configuration: .init(
          zones: [ZoneConfiguration(kind: .normal, pfns: PFN(zoneStart)..<PFN(zoneEnd))], cpuCount: cpuCount,
          backing: .none))
    } catch {
      throw ReplayError(
        file: name, line: nil, reason: "cannot build the zone \(PFN(zoneStart))-\(PFN(zoneEnd)): \(error)")
    }
    state = .allocate(capacity: zoneEnd - zoneStart)
    state.initialize(repeating: 0, count: zoneEnd - zoneStart)
    firstPass()
  }

  deinit { state.deallocate() }

  /// Marks the pages whose first event is a free as allocated before the trace, and
  /// claims them. In a prediction, a page whose first event is a pcp drain, or an
  /// allocation of a pcp order that no `mm_page_alloc_zone_locked` or
  /// `mm_page_alloc_extfrag` took from the buddy first, sat on a pcp list when the trace
  /// began: it is held out of the buddy the same way (counted in ``pretracePcpPages``);
  /// and so are the pages no event names (``unnamed``).
  func firstPass() {
    let zs = zoneStart
    let ze = zoneEnd
    let n = ze - zs
    let seen = UnsafeMutablePointer<UInt8>.allocate(capacity: n)
    seen.initialize(repeating: 0, count: n)
    defer { seen.deallocate() }
    let st = state
    let detailed = holdPcpResidents && parsed.detailed && hasZoneLocked
    var pcpHeld = 0
    parsed.events.withUnsafeBufferPointer { events in
      for e in events where e.kind != .malformed {
        let c = 1 &<< Int(e.order)
        if e.pfn < zs || e.pfn &+ c > ze { continue }
        var held = e.kind == .free || e.kind == .freeBatched
        var pcpResident = false
        if detailed {
          if e.kind == .drain {
            pcpResident = true
          } else if e.kind == .alloc && PageAllocator.isPcpOrder(Int(e.order))
            && e.migrateType < UInt8(MigrateType.pcpTypes)
          {
            pcpResident = true
          }
          held = held || pcpResident
        }
        var p = e.pfn &- zs
        let end = p &+ c
        while p < end {
          if seen[p] == 0 {
            seen[p] = 1
            if held {
              st[p] = pcpResident ? ReplayEngine.pcpHeld : 1 &+ ReplayEvent.unknownType
              if pcpResident { pcpHeld &+= 1 }
            }
          }
          p &+= 1
        }
      }
    }
    pretracePcpPages = pcpHeld
    if holdPcpResidents && !unnamedFree {
      // A prediction holds the pages the trace never names as allocated: they take part
      // only as merge partners, and assumed free they put blocks at the heads of the
      // model's free lists that the kernel's did not have.
      for p in 0..<n where seen[p] == 0 {
        st[p] = 1 &+ ReplayEvent.unknownType
        unnamed &+= 1
      }
    }
    // Claim each run of pre-trace pages (not counted as allocations).
    var i = 0
    while i < n {
      if st[i] == 0 {
        i += 1
        continue
      }
      var j = i
      while j < n && st[j] != 0 { j += 1 }
      let r = allocator.claimFreeRange(zs + i, count: j - i, account: false)
      precondition(r == .claimed, "pre-trace claim failed")
      preallocated += j - i
      i = j
    }
    // The report's pre-trace pages are those freed before any allocation.
    preallocated -= unnamed + pcpHeld
  }

  @inline(never)
  func anomaly(_ k: ReplayAnomaly, _ line: Int32, _ reason: String) throws(ReplayError) {
    if strict { throw ReplayError(file: name, line: Int(line), reason: k.rawValue + ": " + reason) }
    sampler?.anomaly(k, line: Int(line), index: currentIndex, reason: reason)
    let i = ReplayAnomaly.allCases.firstIndex(of: k)!
    anomalyCounts[i] += 1
    if anomalyLines[i].count < 5 { anomalyLines[i].append(Int(line)) }
  }

  /// Applies every event (the caller then drains the pcp lists).
  func apply() throws(ReplayError) {
    let a = allocator
    let zs = zoneStart
    let ze = zoneEnd
    let st = state
    var curCPU = -1
    defer { PageAllocator.setThreadCPU(nil) }
    let events = parsed.events
    let sampler = sampler
    try events.withUnsafeBufferPointer { (events) throws(ReplayError) in
      for i in events.indices {
        let e = events[i]
        if let sampler {
          currentIndex = i
          sampler.observe(i)
        }
        if _slowPath(e.kind == .malformed) {
          try anomaly(.malformed, e.line, parsed.malformedReasons[e.pfn])
          continue
        }
        if _slowPath(e.kind != .alloc && e.kind != .free) { continue }
        let order = Int(e.order)
        let n = 1 &<< order
        if _slowPath(e.pfn < zs || e.pfn &+ n > ze) {
          try anomaly(.outOfRange, e.line, "pfn \(PFN(e.pfn)) order \(order) is outside the zone \(PFN(zs))-\(PFN(ze))")
          continue
        }
        let off = e.pfn &- zs
        let end = off &+ n
        if e.kind == .alloc {
          var p = off
          while p < end && st[p] == 0 { p &+= 1 }
          if _slowPath(p < end) {
            try anomaly(.allocBusy, e.line, "pfn \(PFN(e.pfn)) order \(order): page \(PFN(zs &+ p)) is not free")
            continue
          }
          let r = a.claimFreeRange(e.pfn, count: n)
          precondition(r == .claimed, "replay state and allocator disagree at \(PFN(e.pfn))")
          p = off
          let v = 1 &+ e.migrateType
          while p < end {
            st[p] = v
            p &+= 1
          }
          allocs &+= 1
        } else {
          var p = off
          while p < end && st[p] != 0 { p &+= 1 }
          if _slowPath(p < end) {
            try anomaly(.doubleFree, e.line, "pfn \(PFN(e.pfn)) order \(order): page \(PFN(zs &+ p)) is already free")
            continue
          }
          let cpu = Int(e.cpu) % cpuCount
          if cpu != curCPU {
            PageAllocator.setThreadCPU(cpu)
            curCPU = cpu
          }
          p = off
          while p < end {
            st[p] = 0
            p &+= 1
          }
          if order == 0 {
            a.freePages(PFN(e.pfn), order: 0)
          } else {
            a.freeContigRange(PFN(e.pfn), count: n)
          }
          frees &+= 1
        }
      }
    }
  }

  /// Per pageblock (from the zone start rounded down to a pageblock, as
  /// ``FragmentationMap`` lays its cells out): allocated pages by the migratetype their
  /// mm_page_alloc line gave, 0...5, and at index 6 the pages of unknown type.
  func allocatedByType() -> [[Int]] {
    let pb = PageGeometry.pageblockPages
    let first = zoneStart & ~(pb - 1)
    var out = [[Int]](repeating: [Int](repeating: 0, count: 7), count: (zoneEnd - first + pb - 1) / pb)
    for i in 0..<(zoneEnd - zoneStart) where state[i] != 0 {
      out[(zoneStart + i - first) / pb][min(Int(state[i]) - 1, 6)] += 1
    }
    return out
  }

  /// The replay's own record of the free pages: pfns free at the end.
  func freePFNs() -> [Int] {
    var out: [Int] = []
    for i in 0..<(zoneEnd - zoneStart) where state[i] == 0 { out.append(zoneStart + i) }
    return out
  }
}

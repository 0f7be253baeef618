import PageAlloc
import CPageAllocGzip
import _PageAllocUtilities
import CPageAllocShim
import Glibc

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

import PageAlloc

extension KmemTraceParser {
  /// One input of the trace-parser fuzzer (Fuzz/TraceParserFuzz.swift), and of the tests
  /// that replay its seed corpus: the parser must not trap on any bytes, must parse the
  /// bytes the same whole as streamed in two pieces cut after a newline (the way the gzip
  /// reader feeds it), must record the same page events in a detailed parse, and every
  /// event it records must be in range, its lines numbered in
  /// order. Returns nil, or what went wrong.
  package static func checkFuzzInput(_ bytes: UnsafeRawBufferPointer) -> String? {
    let whole = parse(bytes)
    if whole.events.count > whole.linesRead { return "more events than lines" }
    // A detailed parse records the same page events, one timestamp per event.
    let detailed = parse(bytes, detailed: true)
    if detailed.times.count != detailed.events.count { return "a timestamp per event" }
    var cut = bytes.count / 2
    while cut < bytes.count && bytes[cut] != 0x0A { cut += 1 }
    var streamed = ParsedTrace()
    feed(UnsafeRawBufferPointer(rebasing: bytes[0..<min(cut + 1, bytes.count)]), &streamed)
    if cut + 1 < bytes.count { feed(UnsafeRawBufferPointer(rebasing: bytes[(cut + 1)...]), &streamed) }
    func fields(_ e: ReplayEvent) -> [Int] {
      [Int(e.kind.rawValue), e.pfn, Int(e.line), Int(e.cpu), Int(e.order), Int(e.migrateType)]
    }
    func pageEvents(_ t: ParsedTrace) -> [[Int]] {
      t.events.filter { $0.kind == .alloc || $0.kind == .free }.map(fields)
    }
    if pageEvents(detailed) != pageEvents(whole) { return "a detailed parse changed the alloc and free events" }
    if streamed.events.count != whole.events.count { return "streaming changed the number of events" }
    for (s, w) in zip(streamed.events, whole.events) where fields(s) != fields(w) {
      return "streaming changed an event: \(fields(s)) against \(fields(w))"
    }
    if streamed.malformedReasons != whole.malformedReasons { return "streaming changed the malformed reasons" }
    if streamed.linesRead != whole.linesRead || streamed.linesIgnored != whole.linesIgnored
      || streamed.allocFailures != whole.allocFailures || streamed.maxCPU != whole.maxCPU
    {
      return "streaming changed the counts"
    }
    var lastLine: Int32 = 0
    for e in whole.events {
      if e.line <= lastLine || Int(e.line) > whole.linesRead { return "line numbers out of order" }
      lastLine = e.line
      switch e.kind {
      case .malformed:
        if e.pfn >= whole.malformedReasons.count { return "no reason for a malformed line" }
      case .alloc, .free, .freeBatched, .drain, .zoneLocked, .extfrag:
        if e.order > 10 { return "order above MAX_PAGE_ORDER" }
        if e.pfn + (1 << Int(e.order)) > pfnLimit { return "block past the pfn limit" }
        if e.migrateType >= 6 && e.migrateType != ReplayEvent.unknownType { return "bad migratetype" }
        if Int(e.cpu) > whole.maxCPU { return "cpu above the maximum seen" }
      }
    }
    return nil
  }
}

// libFuzzer target (b): the kmem trace parser (PageAllocTrace's KmemTraceParser, package
// access through -package-name) must never trap on any bytes, and must parse a trace the
// same whole as streamed in pieces cut at a newline, the way the gzip reader feeds it.

import PageAllocTrace

/// Everything the parser records about an event, to compare two parses field by field.
func fields(_ e: ReplayEvent) -> [Int] {
  [Int(e.kind.rawValue), e.pfn, Int(e.line), Int(e.cpu), Int(e.order), Int(e.migrateType)]
}

@_cdecl("LLVMFuzzerTestOneInput")
public func traceParserFuzzTest(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
  let bytes = UnsafeRawBufferPointer(start: data, count: data == nil ? 0 : size)
  let whole = KmemTraceParser.parse(bytes)
  precondition(whole.events.count <= whole.linesRead, "more events than lines")
  // A detailed parse records a superset of the same events, one timestamp per event.
  let detailed = KmemTraceParser.parse(bytes, detailed: true)
  precondition(detailed.times.count == detailed.events.count, "a timestamp per event")
  precondition(
    detailed.events.filter { $0.kind == .alloc || $0.kind == .free }.map(fields)
      == whole.events.filter { $0.kind == .alloc || $0.kind == .free }.map(fields),
    "a detailed parse changed the alloc and free events")
  // The same bytes streamed in two pieces cut after a newline.
  var cut = bytes.count / 2
  while cut < bytes.count && bytes[cut] != 0x0A { cut += 1 }
  var streamed = ParsedTrace()
  KmemTraceParser.feed(UnsafeRawBufferPointer(rebasing: bytes[0..<min(cut + 1, bytes.count)]), &streamed)
  if cut + 1 < bytes.count {
    KmemTraceParser.feed(UnsafeRawBufferPointer(rebasing: bytes[(cut + 1)...]), &streamed)
  }
  precondition(streamed.events.count == whole.events.count, "streaming changed the number of events")
  for (s, w) in zip(streamed.events, whole.events) {
    precondition(fields(s) == fields(w), "streaming changed an event: \(fields(s)) against \(fields(w))")
  }
  precondition(streamed.malformedReasons == whole.malformedReasons, "streaming changed the malformed reasons")
  precondition(
    streamed.linesRead == whole.linesRead && streamed.linesIgnored == whole.linesIgnored
      && streamed.allocFailures == whole.allocFailures && streamed.maxCPU == whole.maxCPU,
    "streaming changed the counts")
  // Each event's fields are in range, and lines are numbered in order.
  var lastLine: Int32 = 0
  for e in whole.events {
    precondition(e.line > lastLine && Int(e.line) <= whole.linesRead, "line numbers out of order")
    lastLine = e.line
    switch e.kind {
    case .malformed: precondition(e.pfn < whole.malformedReasons.count, "no reason for a malformed line")
    case .alloc, .free, .freeBatched, .drain, .zoneLocked, .extfrag:
      precondition(e.order <= 10, "order above MAX_PAGE_ORDER")
      precondition(e.pfn + (1 << Int(e.order)) <= KmemTraceParser.pfnLimit, "block past the pfn limit")
      precondition(e.migrateType < 6 || e.migrateType == ReplayEvent.unknownType, "bad migratetype")
      precondition(Int(e.cpu) <= whole.maxCPU, "cpu above the maximum seen")
    }
  }
  return 0
}

// libFuzzer target (b): the kmem trace parser must never trap on any bytes.
//
// The parser came with the `views` branch as `KmemTraceParser` (Replay/KmemTraceParser.swift:
// `parse(_: UnsafeRawBufferPointer) -> ParsedTrace`, and `feed(_:_:)` for streaming), not
// as the `parseTraceLine(_:)` the stress/fuzz issue guessed. Fuzz/build.sh compiles this
// target only when `enum KmemTraceParser` is in Sources/PageAlloc (after the merge);
// everything is one module, so the internal parser is reachable.

@_cdecl("LLVMFuzzerTestOneInput")
public func traceParserFuzzTest(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
  let bytes = UnsafeRawBufferPointer(start: data, count: data == nil ? 0 : size)
  // The whole input as one trace.
  let whole = KmemTraceParser.parse(bytes)
  precondition(whole.events.count <= whole.linesRead, "more events than lines")
  // The same bytes streamed in two pieces cut at a newline, as the gzip reader feeds them.
  var cut = bytes.count / 2
  while cut < bytes.count && bytes[cut] != 0x0A { cut += 1 }
  var streamed = ParsedTrace()
  KmemTraceParser.feed(UnsafeRawBufferPointer(rebasing: bytes[0..<min(cut + 1, bytes.count)]), &streamed)
  if cut + 1 < bytes.count {
    KmemTraceParser.feed(UnsafeRawBufferPointer(rebasing: bytes[(cut + 1)...]), &streamed)
  }
  precondition(streamed.events.count == whole.events.count, "streaming changed the events")
  // Each event's fields are in range.
  for e in whole.events where e.kind != .malformed {
    precondition(e.order <= 255 && e.pfn >= 0, "bad event")
  }
  return 0
}

// libFuzzer target (b): the kmem trace parser (PageAllocTrace's KmemTraceParser, package
// access through -package-name) must never trap on any bytes, and must parse a trace the
// same whole as streamed in pieces cut at a newline, the way the gzip reader feeds it
// (KmemTraceParser.checkFuzzInput). The seeds in Fuzz/seeds/trace-parser are replayed by
// the tests (TraceFuzzSeedTests).

import PageAllocTrace

@_cdecl("LLVMFuzzerTestOneInput")
public func traceParserFuzzTest(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
  let bytes = UnsafeRawBufferPointer(start: data, count: data == nil ? 0 : size)
  if let failure = KmemTraceParser.checkFuzzInput(bytes) { fatalError(failure) }
  return 0
}

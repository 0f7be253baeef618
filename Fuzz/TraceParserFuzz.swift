// libFuzzer target (b): the trace-line parser must never trap on any bytes.
//
// The parser lives on the `views` branch; this target is written against the signature
// agreed in the stress/fuzz issue:
//
//     parseTraceLine(_ bytes: UnsafeRawBufferPointer) -> ...   (any result type)
//
// Fuzz/build.sh builds it only when `func parseTraceLine(` exists in Sources/PageAlloc
// (after the views branch is merged); until then the script says so and stops.

@_cdecl("LLVMFuzzerTestOneInput")
public func traceParserFuzzTest(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
  let bytes = UnsafeRawBufferPointer(start: data, count: data == nil ? 0 : size)
  _ = parseTraceLine(bytes)
  // Every line of a buffer, as a trace file reader would split it.
  var start = 0
  for i in 0..<bytes.count where bytes[i] == 0x0A {
    _ = parseTraceLine(UnsafeRawBufferPointer(rebasing: bytes[start..<i]))
    start = i + 1
  }
  return 0
}

import Glibc
import Testing

@testable import PageAllocTrace

/// The trace-parser fuzzer's seed corpus (Fuzz/seeds/trace-parser): real ftrace lines,
/// the trace-cmd and perf script forms, older kernels' decimal pfns, failed allocations,
/// and the malformed lines the replay counts. Each passes the fuzzer's own check and
/// parses into events.
@Suite struct TraceFuzzSeedTests {
  static let directory: String = {
    let file = "\(#filePath)"
    let root = file.firstRange(of: "/Tests/").map { String(file[..<$0.lowerBound]) } ?? "."
    return root + "/Fuzz/seeds/trace-parser"
  }()

  @Test(arguments: ["kmem.txt", "ftrace-real-excerpts.txt", "formats-and-anomalies.txt"])
  func aSeedPassesTheFuzzCheck(_ name: String) throws {
    let f = try #require(fopen("\(Self.directory)/\(name)", "r"))
    defer { fclose(f) }
    var bytes = [UInt8](repeating: 0, count: 8192)
    let n = fread(&bytes, 1, bytes.count, f)
    // libFuzzer's -max_len (Fuzz/run.sh) is 4096: a longer seed would be cut.
    #expect(n > 0 && n <= 4096)
    let failure = bytes[0..<n].withUnsafeBytes { KmemTraceParser.checkFuzzInput($0) }
    #expect(failure == nil, "\(name): \(failure ?? "")")
    let parsed = bytes[0..<n].withUnsafeBytes { KmemTraceParser.parse($0) }
    #expect(parsed.events.contains { $0.kind == .alloc } && parsed.events.contains { $0.kind == .free })
    if name == "formats-and-anomalies.txt" {
      #expect(parsed.malformedReasons.count == 6)
      #expect(parsed.allocFailures == 1)
    }
  }
}

import Testing

@testable import PageAlloc
@testable import PageAllocTrace

/// `GFP(parsing:)` and `description` against every `gfp_flags=` string of two real 6.18
/// traces: each must parse, and print back exactly as the kernel printed it.
@Suite struct GFPFixtureTests {
  static func fixture(_ name: String) -> String {
    let file = "\(#filePath)"
    let root = file.firstRange(of: "/Tests/").map { String(file[..<$0.lowerBound]) } ?? "."
    return root + "/Tests/Fixtures/" + name
  }

  /// The distinct `gfp_flags=` values of a trace, with how often each occurs.
  static func gfpStrings(_ path: String) throws -> [String: Int] {
    try TraceReplay.withFileBytes(path: path) { bytes in
      var out: [String: Int] = [:]
      let key = Array("gfp_flags=".utf8)
      var i = 0
      let n = bytes.count
      while i + key.count <= n {
        var hit = true
        for k in 0..<key.count where bytes[i + k] != key[k] {
          hit = false
          break
        }
        if !hit {
          i += 1
          continue
        }
        var j = i + key.count
        while j < n && bytes[j] != 0x20 && bytes[j] != 0x0A { j += 1 }
        out[
          String(decoding: UnsafeRawBufferPointer(rebasing: bytes[(i + key.count)..<j]), as: UTF8.self), default: 0] +=
          1
        i = j
      }
      return out
    }
  }

  @Test(arguments: [
    ("kmem-6.18-swiftc-tar.trace.gz", 13, 167_330), ("kmem-6.18-tar-czf.trace.gz", 15, 35838),
  ])
  func everyGfpStringRoundTrips(file: String, distinct: Int, lines: Int) throws {
    let strings = try Self.gfpStrings(Self.fixture(file))
    #expect(strings.count == distinct)
    #expect(strings.values.reduce(0, +) == lines)
    for (text, _) in strings {
      let gfp = try #require(GFP(parsing: text), "\(text) does not parse")
      #expect(gfp.description == text)
      // The hex form of the same mask parses to the same flags.
      #expect(GFP(parsing: "0x" + String(gfp.rawValue, radix: 16)) == gfp)
    }
  }

  /// What the traces show: __GFP_WRITE and __GFP_THISNODE occur, and GFP_NOWAIT is bits 11|13.
  @Test func realTracesUseTheFlagsAddedForThem() throws {
    let big = try Self.gfpStrings(Self.fixture("kmem-6.18-swiftc-tar.trace.gz"))
    let small = try Self.gfpStrings(Self.fixture("kmem-6.18-tar-czf.trace.gz"))
    let all = Set(big.keys).union(small.keys).compactMap { GFP(parsing: $0) }
    #expect(all.contains { $0.contains(.write) })
    #expect(all.contains { $0.contains(.thisNode) })
    #expect(big["GFP_NOWAIT"] == 174)
    #expect(GFP(parsing: "GFP_NOWAIT")?.rawValue == 0x2800)
  }
}

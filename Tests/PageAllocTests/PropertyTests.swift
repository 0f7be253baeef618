import PageAlloc
import PageAllocStress
import Testing
import PageAllocTestSupport

/// Random sequences of every well-formed API call (the API-sequence driver's ops decoded
/// from random bytes, as the fuzzer decodes its inputs, without the hostile ones):
/// `verify()` and no bad page after each step, free + held + quarantined = managed, and
/// after everything is given back, all memory free and fully merged.
@Suite struct PropertyTests {
  static func run(_ bytes: [UInt8], pages: Int = 8192, section: Int = 1024) throws {
    let a = try makeAllocator(pages: pages, cpus: 2, section: section)
    // Pinned, so that a failing sequence reproduces whatever CPU runs it.
    PageAllocator.setThreadCPU(0)
    defer { PageAllocator.setThreadCPU(nil) }
    var d = APISequence(a)
    var done: [APISequence.Op] = []
    try bytes.withUnsafeBytes { raw in
      var r = ByteReader(raw)
      while !r.atEnd {
        let op = d.decode(&r, hostile: false)
        d.step(op)
        done.append(op)
        try a.verify()
        guard a.badPageCount == 0 else {
          Issue.record("bad page after \(done.suffix(8)): \(a.badPageReports.prefix(3))")
          return
        }
        #expect(a.freePageCount + d.held.pageCount + a.quarantinedPageCount == a.managedPageCount, "after \(op)")
      }
    }
    d.releaseAll()
    a.drainAllPages()
    try a.verify()
    #expect(a.badPageCount == 0)
    #expect(a.freePageCount == a.managedPageCount)
    #expect(blocks(a.freeBlocks()) == blocks(canonicalBlocks(free: Array(0..<pages), sectionPages: section)))
  }

  /// 60 random byte strings of 1...600 bytes, each from its own seed: the same strings on
  /// every run (a failure names its seed, and the seed reproduces it).
  @Test(arguments: 0..<60 as Range<UInt64>) func randomSequencesOfEveryCall(seed: UInt64) throws {
    var rng = TestRNG(seed: seed &* 0x9E37_79B9 &+ 17)
    let bytes = (0..<(1 + rng.below(600))).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
    try Self.run(bytes)
  }

  @Test func aLongFixedSequence() throws {
    var rng = TestRNG(seed: 42)
    try Self.run((0..<8000).map { _ in UInt8(truncatingIfNeeded: rng.next()) })
  }

  /// Every kind of op applies (the decoder reaches all of them, and they find what they
  /// need held), so the property above covers the whole API: a few short random byte
  /// strings reach every well-formed call.
  @Test func theDecoderReachesEveryCall() throws {
    PageAllocator.setThreadCPU(0)
    defer { PageAllocator.setThreadCPU(nil) }
    let wellFormed = Set(APISequence.Call.allCases).subtracting([.hostile, .corrupt])
    var seen = Set<APISequence.Call>()
    for seed: UInt64 in 1...16 where !wellFormed.isSubset(of: seen) {
      let a = try makeAllocator(pages: 8192, cpus: 2, section: 1024)
      var d = APISequence(a)
      var rng = TestRNG(seed: seed)
      let bytes = (0..<3000).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
      bytes.withUnsafeBytes { raw in
        var r = ByteReader(raw)
        while !r.atEnd { if let c = d.step(d.decode(&r, hostile: false)).call { seen.insert(c) } }
      }
      d.releaseAll()
      a.drainAllPages()
      try a.verify()
      #expect(a.freePageCount == a.managedPageCount)
    }
    #expect(wellFormed.subtracting(seen).isEmpty, "never called: \(wellFormed.subtracting(seen))")
  }
}

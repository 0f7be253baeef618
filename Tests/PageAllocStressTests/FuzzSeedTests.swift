import Glibc
import PageAlloc
import PageAllocStress
import PageAllocTestSupport
import Testing
import _PageAllocUtilities

/// The API-sequence fuzzer's seed corpus (Fuzz/seeds/api-sequence): written by
/// ``APISequence/encode(_:)`` from the ops below, checked to be exactly these bytes, and
/// each replayed through the fuzzer's own check. The seeds are the regressions the fuzzer
/// found (HostileInputTests; as ops on the fuzzer's present, smaller pool), and long
/// sequences that take the allocator deep (hundreds of items held, fragmented zones,
/// contig ranges) where a short mutated input rarely gets. To rewrite the files after a
/// change to the ops or the format:
///
///     PAGEALLOC_WRITE_SEEDS=1 swift test --filter FuzzSeedTests
@Suite(.serialized) struct FuzzSeedTests {
  static let directory: String = {
    let file = "\(#filePath)"
    let root = file.firstRange(of: "/Tests/").map { String(file[..<$0.lowerBound]) } ?? "."
    return root + "/Fuzz/seeds/api-sequence"
  }()

  /// One allocator for every input, reset by the check, as in the fuzzer.
  static let fuzzAllocator: PageAllocator = try! PageAllocator(configuration: APISequence.fuzzConfiguration)

  /// Ops whose pfns depend on where `prefix` put its first block: `rest` gets the block's
  /// head, found by running `prefix` on a fresh fuzz allocator on CPU 0.
  static func afterBlock(_ prefix: [APISequence.Op], _ rest: (PFN) -> [APISequence.Op]) -> [APISequence.Op] {
    let a = try! PageAllocator(configuration: APISequence.fuzzConfiguration)
    let head = PageAllocator.withThreadCPU(0) { () -> PFN in
      var d = APISequence(a)
      for op in prefix { d.step(op) }
      guard case .block(let p, _, _, _) = d.held[0] else { preconditionFailure("no block held") }
      return p
    }
    return prefix + rest(head)
  }

  /// The regressions of HostileInputTests, named after them and the crash inputs that found
  /// them. (setPageFlagsOnFreePagesIsIgnored has no op: the driver only sets flags on pages
  /// it holds.)
  static var regressions: [(String, [APISequence.Op])] {
    let dma32: GFP = [.kernel, .dma32]
    return [
      ("regression-frozen-range-over-free-blocks-240a0425", [.hostile(.freeContigFrozenRange(934, count: 37))]),
      (
        "regression-pageblock-straddling-zones-bbffbbbbffbb",
        [
          .allocBulk(count: 255, gfp: dma32), .allocBulk(count: 255, gfp: dma32),
          .free(pick: 0, way: .plain, choice: 0), .free(pick: 0, way: .plain, choice: 0), .drain,
        ]
      ),
      (
        "regression-frozen-range-merging-ahead-d0ffc0194c840355d0",
        [.allocContig(count: 256, gfp: .kernel, frozen: true), .hostile(.freeContigFrozenRange(800, count: 2333))]
      ),
      (
        "regression-block-free-after-hostile-frozen-range-28b02bb0282828",
        afterBlock([.alloc(order: 8, gfp: dma32, frozen: false)]) {
          [.hostile(.freeContigFrozenRange($0 + 180, count: 40)), .free(pick: 0, way: .plain, choice: 0), .drain]
        }
      ),
      (
        "regression-split-page-skips-freed-tails-00691fff03020069",
        afterBlock([.alloc(order: 9, gfp: dma32, frozen: false)]) {
          [.hostile(.freeFrozenPages($0 + 415, order: 0)), .split(pick: 0), .free(pick: 0, way: .plain, choice: 0)]
        }
      ),
      (
        "regression-speculative-tail-free-after-hostile-frozen-range-00523030f8f63834f8",
        afterBlock([.setCPU(0), .alloc(order: 10, gfp: .kernel, frozen: false)]) {
          [
            .hostile(.freeContigFrozenRange($0 + 0xf8, count: 1368)), .speculativeGet(pick: 0),
            .free(pick: 0, way: .plain, choice: 0), .drain,
          ]
        }
      ),
      (
        "regression-one-compound-page-is-a-plain-page-d5c269e1",
        [
          .allocContig(count: 1, gfp: [.kernel, .comp], frozen: false), .speculativeGet(pick: 0),
          .free(pick: 0, way: .plain, choice: 0),
        ]
      ),
    ]
  }

  /// A long random sequence of well-formed ops (and, with `hostile`, one hostile call in
  /// about twenty; with `movable`, movable blocks with owners and compactions among them),
  /// up to 4000 bytes encoded (libFuzzer's -max_len is 4096).
  static func longSequence(seed: UInt64, hostile: Bool, movable: Bool = false) -> [APISequence.Op] {
    let a = try! PageAllocator(configuration: APISequence.fuzzConfiguration)
    let d = APISequence(a)
    var rng = SeededRandom(seed: seed)
    let span = a.pfnSpan.upperBound.value
    var ops: [APISequence.Op] = []
    var bytes = 0
    func gfp() -> GFP { APISequence.decodedGFPs[rng.below(7)] }
    func pfn() -> PFN { PFN(rng.below(span + span / 8) - span / 16) }
    while true {
      let op: APISequence.Op
      switch rng.below(hostile ? 105 : movable ? 115 : 100) {
      case 0..<22:
        let order = rng.below(10) < 8 ? rng.below(4) : 4 + rng.below(7)
        op = .alloc(order: order, gfp: gfp(), frozen: rng.below(7) == 0)
      case 22..<40: op = .free(pick: rng.below(256), way: .init(rawValue: rng.below(4))!, choice: rng.next() & 0xffff)
      case 40..<45: op = .split(pick: rng.below(256))
      case 45..<49: op = .getPut(pick: rng.below(256), page: rng.below(1 << 16))
      case 49..<55: op = .allocBulk(count: 1 + rng.below(64), gfp: gfp())
      case 55..<59:
        op = .allocContig(
          count: 1 + rng.below(300), gfp: APISequence.decodedContigGFPs[rng.below(5)], frozen: rng.below(2) == 0)
      case 59..<62:
        let s = rng.below(span)
        op = .allocContigRange(PFN(s)..<PFN(s + 1 + rng.below(600)), gfp: .kernel, frozen: rng.below(2) == 0)
      case 62..<65: op = .drain
      case 65..<69: op = .get(pick: rng.below(256), page: rng.below(1 << 16))
      case 69..<73: op = .put(pick: rng.below(256))
      case 73..<81:
        op = .freeStretch(
          pick: rng.below(256), page: rng.below(1 << 16), count: 1 + rng.below(300),
          way: .init(rawValue: rng.below(4))!, choice: rng.next() & 0xff)
      case 81..<84: op = .speculativeGet(pick: rng.below(256))
      case 84..<88: op = .freeScattered(phase: rng.below(3), choice: rng.next() & 0xff)
      case 88..<100: op = .setCPU(rng.below(2))
      case 100..<111 where movable:
        op = .allocMovable(
          order: rng.below(10) < 8 ? 0 : 1 + rng.below(9), gfp: APISequence.decodedMovableGFPs[rng.below(4)])
      case 111..<115 where movable:
        switch rng.below(4) {
        case 0: op = .compact(.zone(order: 1 + rng.below(10)))
        case 1: op = .compact(.all)
        case 2: op = .compact(.proactive)
        default: op = .compact(.kcompactd)
        }
      default:
        switch rng.below(5) {
        case 0: op = .hostile(.freePages(pfn(), order: rng.below(12)))
        case 1: op = .hostile(.freeContigRange(pfn(), count: rng.below(300)))
        case 2: op = .hostile(.putPage(pfn()))
        case 3: op = .hostile(.freeContigFrozenRange(pfn(), count: rng.below(300)))
        default: op = .corrupt(pick: rng.below(256), page: rng.below(256), flags: .locked, way: .plain)
        }
      }
      let n = d.encode([op]).count
      if bytes + n > 4000 { return ops }
      ops.append(op)
      bytes += n
    }
  }

  static var seeds: [(String, [APISequence.Op])] {
    regressions + (1...3).map { ("long-well-formed-\($0)", longSequence(seed: $0, hostile: false)) }
      + (4...5).map { ("long-with-hostile-calls-\($0)", longSequence(seed: $0, hostile: true)) }
      + [("long-movable-and-compaction-6", longSequence(seed: 6, hostile: false, movable: true))]
  }

  func readBytes(_ path: String) -> [UInt8]? {
    guard let f = fopen(path, "r") else { return nil }
    defer { fclose(f) }
    var out: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while true {
      let n = fread(&chunk, 1, chunk.count, f)
      if n <= 0 { break }
      out += chunk[0..<n]
    }
    return out
  }

  /// Every committed seed is the encoding of its ops (rewritten with PAGEALLOC_WRITE_SEEDS=1).
  @Test func theSeedFilesAreTheEncodedOps() throws {
    let d = APISequence(Self.fuzzAllocator)
    let write = getenv("PAGEALLOC_WRITE_SEEDS") != nil
    for (name, ops) in Self.seeds {
      let bytes = d.encode(ops)
      let path = "\(Self.directory)/\(name)"
      if write {
        let f = try #require(fopen(path, "w"))
        _ = bytes.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, f) }
        fclose(f)
      }
      #expect(readBytes(path) == bytes, "\(path) is not the encoding of its ops")
      #expect(bytes.count <= 4096)
    }
  }

  /// Decoding an encoded sequence gives back its ops: the encoder writes the fuzzer's
  /// format.
  @Test func decodingTheEncodingGivesTheOps() throws {
    let d = APISequence(Self.fuzzAllocator)
    for (name, ops) in Self.seeds {
      let bytes = d.encode(ops)
      var decoded: [APISequence.Op] = []
      bytes.withUnsafeBytes { raw in
        var r = ByteReader(raw)
        while !r.atEnd { decoded.append(d.decode(&r, hostile: true)) }
      }
      #expect(decoded == ops, "\(name)")
    }
  }

  /// Every file of the seed directory passes the fuzzer's check; the long sequences really
  /// go deep (hundreds of ops, and many items held at once).
  @Test func everySeedPassesTheFuzzCheck() throws {
    let names = try #require(directoryEntries(Self.directory))
    #expect(Set(names).isSuperset(of: Self.seeds.map(\.0)))
    for name in names {
      let bytes = try #require(readBytes("\(Self.directory)/\(name)"))
      let failure = bytes.withUnsafeBytes { APISequence.checkFuzzInput($0, on: Self.fuzzAllocator) }
      #expect(failure == nil, "\(name): \(failure ?? "")")
    }
    for (name, ops) in Self.seeds where name.hasPrefix("long") {
      #expect(ops.count > 500, "\(name): \(ops.count) ops")
      let a = try PageAllocator(configuration: APISequence.fuzzConfiguration)
      var most = 0
      PageAllocator.withThreadCPU(0) {
        var d = APISequence(a)
        for op in ops {
          d.step(op)
          most = max(most, d.held.count)
        }
        d.releaseAll()
      }
      #expect(most >= 40, "\(name): at most \(most) items held")
    }
  }

  /// An input gives the same result on the reused, reset allocator as on a fresh one: a
  /// crash the fuzzer finds reproduces from its input alone.
  @Test func aResetAllocatorRunsAnInputLikeAFreshOne() throws {
    let d = APISequence(Self.fuzzAllocator)
    for (name, ops) in Self.seeds {
      let bytes = d.encode(ops)
      let fresh = try PageAllocator(configuration: APISequence.fuzzConfiguration)
      #expect(bytes.withUnsafeBytes { APISequence.checkFuzzInput($0, on: fresh) } == nil)
      #expect(bytes.withUnsafeBytes { APISequence.checkFuzzInput($0, on: Self.fuzzAllocator) } == nil)
      let reused = Self.fuzzAllocator
      #expect(blocks(reused.freeBlocks()) == blocks(fresh.freeBlocks()), "\(name)")
      #expect(reused.zoneStatistics() == fresh.zoneStatistics(), "\(name)")
      #expect(reused.badPageReports == fresh.badPageReports, "\(name)")
      #expect(reused.quarantinedPageCount == fresh.quarantinedPageCount, "\(name)")
    }
  }
}

/// The names in a directory (no `.` entries), or nil when it cannot be read.
func directoryEntries(_ path: String) -> [String]? {
  guard let dir = opendir(path) else { return nil }
  defer { closedir(dir) }
  var out: [String] = []
  while let e = readdir(dir) {
    let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    if !name.hasPrefix(".") { out.append(name) }
  }
  return out.sorted()
}

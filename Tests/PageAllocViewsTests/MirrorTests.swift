import Glibc
import Testing

@testable import PageAlloc
@testable import PageAllocViews

/// `pagealloc mirror`'s two halves: the /proc/zoneinfo parser, and the model built from a
/// real machine's zones and sysctls, whose numbers must equal the kernel's.
@Suite struct MirrorTests {
  static func fixture(_ name: String) -> String {
    let file = "\(#filePath)"
    let root = file.firstRange(of: "/Tests/").map { String(file[..<$0.lowerBound]) } ?? "."
    return root + "/Tests/Fixtures/" + name
  }

  static func machineInputs(_ zoneinfo: String = "machine-zoneinfo.txt") throws -> MachineMirror.Inputs {
    try MachineMirror.readInputs(
      zoneinfoPath: fixture(zoneinfo), sysVM: fixture("machine-sys-vm"), thpEnabledPath: nil, transparentHugePages: true
    )
  }

  /// This machine's real /proc/zoneinfo (Linux 6.18, 2 CPUs, DMA, DMA32, a Normal zone
  /// only partly initialised yet, empty Movable and Device) and its sysctls: every number
  /// the kernel derives, the model derives equal, min_free_kbytes included (khugepaged's
  /// 11 pageblocks for each of 3 zones: 67584 kB).
  @Test(arguments: [
    "machine-zoneinfo.txt", "kmem-6.18-tar-czf.zoneinfo-before.txt", "kmem-6.18-tar-czf.zoneinfo-after.txt",
  ])
  func everyNumberOfThisMachineIsEqual(zoneinfo: String) throws {
    let m = try MachineMirror(Self.machineInputs(zoneinfo))
    #expect(m.cpus == 2)
    #expect(m.inputs.minFreeKbytes == 67584 && m.inputs.lowmemReserveRatio == [256, 256, 32, 0, 0])
    for r in m.rows where !r.equal { Issue.record("\(r.zone) \(r.field): kernel \(r.kernel), model \(r.model)") }
    #expect(m.allEqual && m.exitStatus == 0)
    // 5 zones x (3 counts + 4 watermarks + 5 protection) + 3 populated zones x 2 CPUs x 4
    // pageset numbers + min_free_kbytes.
    #expect(m.rows.count == 5 * 12 + 3 * 2 * 4 + 1)
    #expect(m.text.hasSuffix("all 85 numbers equal\n"))
  }

  /// The zones as the model was given them, and what it derived, for the first fixture.
  @Test func theMachinesNumbers() throws {
    let m = try MachineMirror(Self.machineInputs())
    let z = m.allocator.nodeZoneStatistics()
    #expect(z.map(\.kind) == ZoneKind.allCases)
    #expect(z.map(\.managed) == [3840, 772798, 458752, 0, 0])
    #expect(z.map(\.watermarkMin) == [52, 10569, 6274, 32, 0])
    #expect(z[1].lowmemReserve == [0, 0, 1792, 1792, 1792])
    #expect(z[0].lowmemReserve == [0, 3018, 4810, 4810, 4810])
    #expect(z.map(\.batch) == [1, 63, 63, 1, 1] && z.map(\.highMin) == [32, 6605, 3921, 0, 0])
    #expect(z[2].pfns == PFN(1_048_576)..<PFN(6_553_600))
    // The live state is shown: DMA's pcps untouched since boot, Normal's tuned.
    #expect(m.liveState.map(\.zone) == ["DMA", "DMA32", "Normal"])
    #expect(m.text.contains("DMA cpu0        count       0  high       0  (untouched since boot)"))
    #expect(m.text.contains("Normal cpu0     count   13621  high   22008  (tuned)"))
    // The boot-time rule alone would give 8800 kB; THP raises it.
    #expect(m.allocator.recommendedMinFreeKbytes(transparentHugePages: false) == 8800)
  }

  /// A number that differs is marked, and the mirror's exit status is 1.
  @Test func aMismatchIsMarked() throws {
    var inputs = try Self.machineInputs()
    inputs.zoneinfo.zones[1].low += 1
    inputs.zoneinfo.zones[2].pagesets[1].highMin = 4000
    let m = try MachineMirror(inputs)
    #expect(!m.allEqual && m.exitStatus == 1)
    #expect(m.rows.filter { !$0.equal }.map { "\($0.zone) \($0.field)" } == ["DMA32 low", "Normal cpu1 high_min"])
    #expect(m.text.contains("  low" + String(repeating: " ", count: 30) + "13212     13211  MISMATCH\n"))
    #expect(m.text.hasSuffix("2 of 85 numbers differ\n"))
    #expect(m.json.contains(#"{"zone": "DMA32", "field": "low", "kernel": 13212, "model": 13211, "equal": false}"#))
    #expect(m.json.hasSuffix("\"all_equal\": false\n}\n"))
  }

  /// The THP mode decides min_free_kbytes: with THP `never` the kernel would keep its own
  /// computation, 8800 kB here, so this machine's 67584 differs.
  @Test func minFreeKbytesFollowsTheTHPMode() throws {
    var inputs = try Self.machineInputs()
    inputs.transparentHugePages = false
    let m = try MachineMirror(inputs)
    #expect(m.rows.filter { !$0.equal }.map(\.field) == ["min_free_kbytes"])
    inputs.transparentHugePages = nil
    #expect(try MachineMirror(inputs).rows.contains { $0.field == "min_free_kbytes" } == false)
  }

  /// The model's own /proc/zoneinfo (the 2026 format, with reserved_highatomic and
  /// free_highatomic) parses, and mirrors into an equal model.
  @Test func theModelsOwnZoneinfoRoundTrips() throws {
    var c = PageAllocator.Configuration(
      zones: [
        ZoneConfiguration(kind: .dma, pfns: PFN(1)..<PFN(4096), reserved: [PFN(4000)..<PFN(4096)]),
        ZoneConfiguration(kind: .dma32, pfns: PFN(4096)..<PFN(65536)),
        ZoneConfiguration(kind: .normal, pfns: PFN(65536)..<PFN(131072), unavailable: [PFN(131000)..<PFN(131072)]),
      ], cpuCount: 3, backing: .none)
    c.minFreeKbytes = 4096
    c.watermarkScaleFactor = 50
    let a = try PageAllocator(configuration: c)
    for _ in 0..<100 { _ = a.allocPages(order: 0, gfp: .kernel) }
    let text = a.zoneInfo()
    let parsed = try ZoneInfoText(parsing: text)
    #expect(parsed.zones.map(\.name) == ["DMA", "DMA32", "Normal", "Movable", "Device"])
    #expect(parsed.zones[2].reservedHighatomic == 0 && parsed.zones[2].freeHighatomic == 0)
    #expect(parsed.zones[2].stats.map(\.name) == ["nr_free_pages", "nr_free_pages_blocks", "nr_free_cma"])
    #expect(parsed.zones.map(\.spanned) == a.nodeZoneStatistics().map(\.spanned))
    let m = try MachineMirror(
      .init(
        zoneinfo: parsed, minFreeKbytes: 4096, watermarkScaleFactor: 50,
        lowmemReserveRatio: ZoneKind.defaultLowmemReserveRatio))
    #expect(m.cpus == 3)
    #expect(m.allEqual)
  }

  /// A 6.18 zoneinfo has no highatomic lines; per-node stats come with the first
  /// populated zone.
  @Test func parsesThe618Format() throws {
    let text = try #require(try? readFixture("machine-zoneinfo.txt"))
    let z = try ZoneInfoText(parsing: text).zones
    #expect(z.count == 5)
    #expect(z[0].nodeStats.count == 51 && z[1].nodeStats.isEmpty)
    #expect(z[0].stats.count == 17 && z[0].stats.last?.name == "numa_other")
    #expect(z[2].reservedHighatomic == nil && z[2].startPFN == 1_048_576)
    #expect(z[2].pagesets.map(\.count) == [13621, 3401] && z[2].pagesets.map(\.statThreshold) == [20, 20])
    #expect(z[3].populated == false && z[3].protection == [0, 0, 0, 0, 0] && z[3].min == 32)
  }

  func readFixture(_ name: String) throws -> String {
    let path = Self.fixture(name)
    var out = ""
    guard let f = fopen(path, "r") else { throw MachineMirror.MirrorError(message: "cannot open \(path)") }
    defer { fclose(f) }
    var buf = [CChar](repeating: 0, count: 4096)
    while fgets(&buf, Int32(buf.count), f) != nil {
      out += String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
    return out
  }

  /// Parse errors name the line.
  @Test func parseErrorsNameTheLine() throws {
    let text = try readFixture("machine-zoneinfo.txt")
    var lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
    lines[60] = "        min      5x2"
    #expect(throws: ZoneInfoText.ParseError(line: 61, message: "'5x2' is not a number")) {
      try ZoneInfoText(parsing: lines.joined(separator: "\n"))
    }
    lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
    lines[70] = "        bogus    1"
    #expect(throws: ZoneInfoText.ParseError(line: 71, message: "unknown zone field 'bogus'")) {
      try ZoneInfoText(parsing: lines.joined(separator: "\n"))
    }
    #expect(throws: ZoneInfoText.ParseError(line: 1, message: "text before the first 'Node N, zone NAME' line")) {
      try ZoneInfoText(parsing: "  pages free 1\n")
    }
    #expect(throws: ZoneInfoText.ParseError(line: 2, message: "unexpected line 'garbage'")) {
      try ZoneInfoText(parsing: "Node 0, zone   Normal\ngarbage\n")
    }
    // A missing file and a missing sysctl are errors naming the path.
    #expect(throws: MachineMirror.MirrorError.self) {
      try MachineMirror.readInputs(zoneinfoPath: "/nonexistent/zoneinfo", thpEnabledPath: nil)
    }
  }
}

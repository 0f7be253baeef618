import Glibc
import Testing

@testable import PageAlloc
import PageAllocTestSupport
import _PageAllocUtilities
@testable import PageAllocTrace

/// This machine's capture (Tests/Fixtures/kmem-6.18-tar-czf.trace.gz, with its zoneinfo).
let recordSamplePath: String = {
  let file = "\(#filePath)"
  let root = file.firstRange(of: "/Tests/").map { String(file[..<$0.lowerBound]) } ?? "."
  return root + "/Tests/Fixtures/kmem-6.18-tar-czf.trace.gz"
}()

@Suite(.serialized) struct PredictionTests {
  // MARK: - Parsing

  @Test func detailedParseReadsEveryKmemEvent() {
    let text = """
      # tracer: nop
      #
      # entries-in-buffer/entries-written: 71273/71275   #P:4
      #
                 tar-8298    [000] d..3.   301.224817: mm_page_alloc_zone_locked: page=00000000b7c9e840 pfn=0x168d78 order=2 migratetype=1 percpu_refill=1
                 tar-8298    [001] d..1.   301.224924: mm_page_alloc_zone_locked: page=00000000aa47d6df pfn=0x14d8a0 order=4 migratetype=1 percpu_refill=0
                 tar-8298    [001] d..3.   303.606981: mm_page_alloc_extfrag: page=000000006682478e pfn=0x11c400 alloc_order=0 fallback_order=10 pageblock_order=9 alloc_migratetype=0 fallback_migratetype=1 fragmenting=0 change_ownership=1
               clang-20239   [002] d..3.  2071.894519: mm_page_pcpu_drain: page=00000000c8d13cf5 pfn=0x155765 order=0 migratetype=1
                date-8295    [000] ...4.   301.213577: mm_page_free_batched: page=00000000157a3bd7 pfn=0x1214b4 order=0
                bash-8289    [003] .....   301.213098: mm_page_alloc: page=0000000007f22533 pfn=0x11bc33 order=0 migratetype=0 gfp_flags=GFP_KERNEL
      """
    let bytes = Array(text.utf8)
    let plain = bytes.withUnsafeBytes { KmemTraceParser.parse($0) }
    let d = bytes.withUnsafeBytes { KmemTraceParser.parse($0, detailed: true) }
    #expect(plain.events.map(\.kind) == [.alloc])
    #expect(plain.linesIgnored == 9)
    #expect(d.events.map(\.kind) == [.zoneLocked, .zoneLocked, .extfrag, .drain, .freeBatched, .alloc])
    #expect(d.headerCPUs == 4 && plain.headerCPUs == 4)
    #expect(d.entriesInBuffer == 71273 && d.entriesWritten == 71275)
    #expect(
      d.times == [
        301_224_817_000, 301_224_924_000, 303_606_981_000, 2071_894_519_000, 301_213_577_000, 301_213_098_000,
      ])
    let zl = d.events[0]
    #expect(zl.pfn == 0x168d78 && zl.order == 2 && zl.migrateType == 1 && zl.percpuRefill && zl.cpu == 0)
    #expect(!d.events[1].percpuRefill && d.events[1].order == 4)
    let x = d.events[2]
    #expect(x.pfn == 0x11c400 && x.order == 0 && x.migrateType == 0)
    #expect(x.fallbackOrder == 10 && x.fallbackType == 1 && x.changeOwnership)
    #expect(d.events[3].migrateType == 1 && d.events[3].cpu == 2)
    #expect(d.events[4].pfn == 0x1214b4 && d.events[4].order == 0)
    #expect(d.maxCPU == 3)
  }

  @Test func companionStem() {
    #expect(TraceReplay.companionStem(of: "a/x.trace.gz") == "a/x")
    #expect(TraceReplay.companionStem(of: "x.trace") == "x")
    #expect(TraceReplay.companionStem(of: "x.txt.gz") == "x")
    #expect(TraceReplay.companionStem(of: "x.gz") == "x")
    #expect(TraceReplay.companionStem(of: "x") == "x")
  }

  @Test func zoneinfoSnapshot() throws {
    let text = try #require(try? readTextFile(TraceReplay.companionStem(of: recordSamplePath) + ".zoneinfo-before.txt"))
    let snap = try #require(PcpSnapshot.parse(zoneinfo: text, holding: 0x102800))
    #expect(snap.zone == "Normal")
    #expect(snap.startPFN == 1_048_576)
    #expect(snap.cpus.count == 2)
    #expect(snap.cpus[0] == PcpSnapshot.CPU(count: 3733, high: 4047, batch: 63, highMin: 3921, highMax: 28672))
    #expect(snap.cpus[1].count == 3865 && snap.cpus[1].high == 3921)
    #expect(PcpSnapshot.parse(zoneinfo: text, holding: 100)?.zone == "DMA")
    #expect(PcpSnapshot.parse(zoneinfo: "", holding: 0) == nil)
  }

  // MARK: - The model predicting itself

  /// A trace the model wrote itself, with every event the prediction reads, is predicted
  /// without a miss: the shadow replay asks the same functions that made the trace.
  @Test(arguments: [1 as UInt64, 2, 3])
  func theModelPredictsItsOwnTrace(seed: UInt64) throws {
    let pages = 1 << 16
    let (a, sink) = try makeTracedAllocator(pages: pages, cpus: 2)
    defer { PageAllocator.setThreadCPU(nil) }
    var rng = TestRNG(seed: seed)
    var live: [(PFN, Int)] = []
    for _ in 0..<20000 {
      PageAllocator.setThreadCPU(rng.below(2))
      if rng.next() % 100 < 55 || live.isEmpty {
        let r = rng.next() % 40
        let order = r == 0 ? 9 : r == 1 ? 5 : Int(rng.next() % 4)
        if let p = a.allocPages(order: order, gfp: GFP.highUserMovable.union(.noWarn)) { live.append((p, order)) }
      } else {
        let i = Int(rng.next() % UInt64(live.count))
        a.freePages(live[i].0, order: live[i].1)
        live[i] = live[live.count - 1]
        live.removeLast()
      }
    }
    a.setTraceSink(nil)
    let events = sink.snapshot
    #expect(events.contains { $0.kind == .pagePcpuDrain })
    #expect(events.contains { $0.kind == .pageAllocZoneLocked && $0.percpuRefill })
    var text = "# tracer: nop\n#\n# entries-in-buffer/entries-written: \(events.count)/\(events.count)   #P:2\n#\n"
    for (i, e) in events.enumerated() { text += e.ftraceLine(timestamp: 100 + Double(i) * 1e-6) + "\n" }
    let bytes = Array(text.utf8)
    let (r, b) = try bytes.withUnsafeBytes { buf throws(ReplayError) in
      try TraceReplay.run(
        bytes: buf, name: "self.trace",
        options: .init(zone: PFN(0)..<PFN(pages), strict: true, predict: true, unnamedFree: true))
    }
    let p = try #require(r.prediction)
    for d in PredictedDecision.allCases {
      let s = p.score(d)
      #expect(s.hits == s.predicted, "\(d.rawValue): \(s.hits)/\(s.predicted)")
    }
    #expect(p.score(.pcpAlloc).predicted > 1000)
    #expect(p.score(.refill).predicted > 100)
    #expect(p.score(.drain).predicted > 100)
    #expect(p.score(.drainTiming).predicted > 10)
    #expect(p.score(.buddyAlloc).predicted > 10)
    #expect(p.misses.isEmpty)
    a.drainAllPages()
    #expect(Set(b.freeBlocks().map { "\($0.0)/\($0.1)" }) == Set(a.freeBlocks().map { "\($0.0)/\($0.1)" }))
    try b.verify()
  }

  // MARK: - Real traces

  /// The Linux 6.18 fixture: the targets for pcp allocations and drains, against a plain
  /// LIFO baseline.
  @Test func fixtureTracePrediction() throws {
    let (r, a) = try TraceReplay.run(path: realTracePath, options: .init(predict: true))
    let p = try #require(r.prediction)
    #expect(p.cpuCount == 2)
    #expect(p.hasZoneLocked && p.hasDrains)
    let pcp = p.score(.pcpAlloc)
    #expect(pcp.predicted > 160_000)
    #expect(pcp.rate >= 0.995)
    #expect(p.score(.drain).predicted == 12632)
    #expect(p.score(.drain).rate >= 0.995)
    // The drains the model misses are of blocks on the pcp lists before the trace began.
    #expect(p.missClasses.filter { $0.kind == .drain }.allSatisfy { $0.reason.contains("before the trace began") })
    #expect(p.baseline.predicted > 160_000)
    #expect(pcp.rate > p.baseline.rate + 0.01)
    #expect(p.misses.count == 20)
    // Every miss of the classes adds up to the misses.
    for d in PredictedDecision.allCases {
      let s = p.score(d)
      #expect(p.missClasses.filter { $0.kind == d }.reduce(0) { $0 + $1.count } == s.predicted - s.hits)
      #expect(p.byOrder[PredictedDecision.allCases.firstIndex(of: d)!].reduce(0) { $0 + $1.predicted } == s.predicted)
    }
    try a.verify()
    // The JSON object.
    let json = r.json
    #expect(json.contains("\"prediction\": {"))
    for d in PredictedDecision.allCases {
      #expect(
        json.contains("\"\(d.rawValue)\": {\"predicted\": \(p.score(d).predicted), \"hits\": \(p.score(d).hits)},"))
    }
    let m = p.misses[0]
    #expect(
      json.contains(
        "\"misses\": [{\"line\": \(m.line), \"kind\": \"\(m.kind.rawValue)\", \"kernel\": \"\(m.kernel)\", \"model\": \"\(m.model)\"}, "
      ))
    #expect(r.text.contains("pcp_alloc"))
  }

  /// This machine's capture, with the zoneinfo taken beside it.
  @Test func recordSamplePrediction() throws {
    let (r, _) = try TraceReplay.run(path: recordSamplePath, options: .init(predict: true))
    let p = try #require(r.prediction)
    #expect(p.tuningSource.contains("zoneinfo-before"))
    #expect(p.score(.pcpAlloc).predicted > 30000)
    #expect(p.score(.pcpAlloc).rate >= 0.995)
    #expect(p.pretracePcpPages > 0)
    #expect(p.score(.drain).predicted == 0)
  }

  // MARK: - Timeline

  @Test func timelineOfTheRecordSample() throws {
    let (r, _) = try TraceReplay.run(path: recordSamplePath, options: .init(timeline: true))
    let t = try #require(r.timeline)
    #expect(t.timed)
    #expect(t.samples.count > 500 && t.samples.count <= 602)
    #expect(t.marks.filter { $0.kind == .extfrag }.count == 2)
    #expect(zip(t.samples, t.samples.dropFirst()).allSatisfy { $0.x <= $1.x })
    #expect(abs(t.samples.last!.x - 8.009) < 0.01)
    for s in t.samples {
      #expect(s.unusableIndex >= 0 && s.unusableIndex <= 1)
      #expect(s.freePages.count == PageGeometry.orderCount)
    }
    let svg = t.svg(title: "t")
    #expect(svg.hasPrefix("<?xml") && svg.hasSuffix("</svg>\n"))
    #expect(svg.ranges(of: "<polygon").count > 5)
  }

  @Test func timelineMarksAnomalies() throws {
    let text = """
                  bash-1   [000] .....  10.000000: mm_page_alloc: page=000000008a501c6b pfn=0x1000 order=0 migratetype=0 gfp_flags=GFP_KERNEL
                  bash-1   [000] .....  10.500000: mm_page_free: page=000000008a501c6b pfn=0x1000 order=0
                  bash-1   [000] .....  11.000000: mm_page_free: page=000000008a501c6b pfn=0x1000 order=0
      """
    let bytes = Array(text.utf8)
    let (r, _) = try bytes.withUnsafeBytes { buf throws(ReplayError) in
      try TraceReplay.run(bytes: buf, name: "t", options: .init(timeline: true))
    }
    let t = try #require(r.timeline)
    #expect(t.marks.map(\.kind) == [.anomaly])
    #expect(t.marks[0].x == 1.0 && t.marks[0].line == 3)
    #expect(r.count(.doubleFree) == 1)
  }
}

import Foundation
@_spi(Benchmark) @testable import PageAlloc
import Testing
import PageAllocTestSupport
@testable import PageAllocBench

/// The bench kernels with tiny iteration counts: the figures are not timed or compared,
/// only checked for sanity; every suite verifies the allocator itself before returning.
@Suite struct BenchTests {
  static let tiny = BenchOptions(iterations: 3, order: 9, allOrders: false, threads: 2, quick: true)

  @Test("every registered suite runs, verifies and returns sane results", arguments: BenchRegistry.suites.map(\.name))
  func suiteRuns(_ name: String) throws {
    let suite = try #require(BenchRegistry.suite(named: name))
    let results = try suite.run(Self.tiny)
    #expect(!results.isEmpty)
    for r in results {
      #expect(r.suite == name)
      #expect(!r.variant.isEmpty)
      #expect(r.iterations >= 1)
      #expect(r.pagesPerIteration >= 1)
      #expect(r.totalNanoseconds > 0)
      #expect(r.nsPerPage.isFinite && r.nsPerPage > 0)
      for (_, v) in r.extra { #expect(v.isFinite) }
    }
    // Each suite reports its named ratios from its own results.
    #expect(!suite.ratios(results).isEmpty)
  }

  /// A deliberately broken run (a page leaked, or freed twice, just before the suite's
  /// result check): every suite must throw a BenchError naming it, not report figures.
  @Test(arguments: BenchRegistry.suites.map(\.name), BenchSabotage.allCases)
  func aBrokenRunThrows(_ name: String, _ sabotage: BenchSabotage) throws {
    let suite = try #require(BenchRegistry.suite(named: name))
    var o = Self.tiny
    o.sabotage = sabotage
    #expect {
      _ = try suite.run(o)
    } throws: { error in
      guard let e = error as? BenchError else { return false }
      let expected = sabotage == .leakPage ? "pages free after the run" : "bad-page report"
      return e.suite == name && e.message.contains(expected)
    }
  }

  @Test func suiteVariants() throws {
    let variants = { (name: String) throws -> Set<String> in
      Set(try BenchRegistry.suite(named: name)!.run(Self.tiny).map(\.variant))
    }
    #expect(try variants("high-order") == ["per-page", "contig", "handle"])
    #expect(try variants("floor") == ["floor", "contig", "per-page"])
    #expect(try variants("frozen-range") == ["per-page", "contig"])
    #expect(try variants("order0") == ["pcp", "pcp-threads-2", "bypass", "bypass-threads-2", "handle"])
    #expect(try variants("bulk") == ["per-page", "bulk"])
    #expect(try variants("thp") == ["order0", "pair", "compound", "pair-checked", "compound-checked"])
    #expect(
      try variants("debug") == [
        "order0 off", "order0 page_owner", "order0 debug_pagealloc", "contig off", "contig page_owner",
        "contig debug_pagealloc",
      ])
  }

  /// The debug suite's ratios: page_owner and debug_pagealloc over off, per loop.
  @Test func debugSuiteRatios() throws {
    let results = try BenchSuite.debug.run(Self.tiny)
    let ratios = Dictionary(uniqueKeysWithValues: BenchSuite.debug.ratios(results))
    #expect(
      Set(ratios.keys) == [
        "debug.order0.page_owner_over_off", "debug.order0.debug_pagealloc_over_off",
        "debug.contig.page_owner_over_off", "debug.contig.debug_pagealloc_over_off",
      ])
    for (_, v) in ratios { #expect(v > 0 && v.isFinite) }
  }

  /// The thp suite: order-9 pairs in each setting next to the order-0 pair, and its ratios.
  @Test func thpSuite() throws {
    let rs = try BenchSuite.thp.run(Self.tiny)
    let byVariant = Dictionary(uniqueKeysWithValues: rs.map { ($0.variant, $0) })
    #expect(byVariant["order0"]?.order == 0 && byVariant["order0"]?.pagesPerIteration == 1)
    for v in ["pair", "compound", "pair-checked", "compound-checked"] {
      #expect(byVariant[v]?.order == 9 && byVariant[v]?.pagesPerIteration == 512, "\(v)")
    }
    #expect(byVariant["pair-checked"]?.extra["check_pages"] == 1)
    #expect(byVariant["pair"]?.extra["check_pages"] == 0)
    #expect(byVariant["compound"]?.extra["compound"] == 1)
    let ratios = Dictionary(uniqueKeysWithValues: BenchSuite.thp.ratios(rs))
    for k in ["thp.ns_per_pair", "thp.pair_over_order0", "thp.compound_over_pair", "thp.checked_over_pair"] {
      #expect(ratios[k].map { $0.isFinite && $0 > 0 } == true, "\(k)")
    }
  }

  @Test("high-order runs every order 0...10", arguments: [0, 1, 3, 4, 10])
  func highOrderAnyOrder(_ order: Int) throws {
    var o = Self.tiny
    o.order = order
    let rs = try BenchSuite.highOrder.run(o)
    #expect(rs.count == 3)
    #expect(rs.allSatisfy { $0.order == order && $0.pagesPerIteration == 1 << order })
    let fl = try BenchSuite.floor.run(o)
    #expect(fl.count == 3)
  }

  @Test func allOrdersSweep() throws {
    var o = Self.tiny
    o.iterations = 1
    o.allOrders = true
    let rs = try BenchSuite.highOrder.run(o)
    #expect(Set(rs.compactMap(\.order)) == Set(0...10))
    let svg = try #require(BenchReport(machine: .current(), results: rs).svg())
    #expect(svg.hasPrefix("<svg"))
    #expect(svg.contains("<polyline"))
    #expect(svg.hasSuffix("</svg>\n"))
  }

  @Test func jsonSchema() throws {
    var results: [BenchResult] = []
    for s in BenchRegistry.suites { results += try s.run(Self.tiny) }
    let report = BenchReport(machine: .current(), results: results)
    let data = Data(report.json().utf8)
    let root = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
    #expect(Set(root.keys) == ["machine", "results", "ratios"])
    let machine = try #require(root["machine"] as? [String: Any])
    for k in ["cpu", "cores", "swift", "os", "build"] { #expect(machine[k] != nil, "machine.\(k)") }
    let rs = try #require(root["results"] as? [[String: Any]])
    #expect(rs.count == results.count)
    for r in rs {
      for k in [
        "suite", "variant", "order", "iterations", "pages_per_iteration", "total_us", "ns_per_iteration",
        "ns_per_page", "extra",
      ] {
        #expect(r[k] != nil, "results[].\(k)")
      }
    }
    let hi = try #require(rs.first { $0["suite"] as? String == "high-order" && $0["variant"] as? String == "contig" })
    #expect(hi["order"] as? Int == 9)
    #expect(hi["pages_per_iteration"] as? Int == 512)
    let ratios = try #require(root["ratios"] as? [String: Any])
    for k in [
      "high-order.speedup", "high-order.contig_over_floor", "frozen-range.speedup", "high-order.handle_over_contig",
      "order0.handle_over_pfn", "thp.pair_over_order0", "thp.compound_over_pair",
    ] {
      #expect(ratios[k] is Double || ratios[k] is Int, "ratios.\(k)")
    }
    // The table names every suite.
    let table = report.table()
    for s in BenchRegistry.suites { #expect(table.contains(s.name)) }
  }

  /// A wrong path must throw, not report: a leaked page, a bad-page report and a broken
  /// free list each make the check fail.
  @Test func checkRestoredCatchesWrongPaths() throws {
    let a = try PageAllocator(configuration: .normal(pages: 1 << 15, backing: .none))
    let start = a.freePageCount
    try benchCheckRestored(a, startFree: start, suite: "t", variant: "v")
    let p = try #require(a.allocPages(order: 3, gfp: .kernel))
    #expect(throws: BenchError.self) { try benchCheckRestored(a, startFree: start, suite: "t", variant: "v") }
    a.freePages(p, order: 3)
    try benchCheckRestored(a, startFree: start, suite: "t", variant: "v")
    a.freePages(p, order: 3)  // double free: reported
    #expect(throws: BenchError.self) { try benchCheckRestored(a, startFree: start, suite: "t", variant: "v") }
  }

  @Test func floorDropLeavesFrozenPages() throws {
    let a = try PageAllocator(configuration: .normal(pages: 1 << 15, backing: .none))
    let start = a.freePageCount
    let p = try #require(a.allocPages(order: 9, gfp: .kernel))
    a.splitPage(p, order: 9)
    #expect(a.freeFloorDrop(p, count: 512) == 512)
    #expect(a.refcount(of: p) == 0 && a.refcount(of: p + 511) == 0)
    #expect(a.freePageCount == start - 512)
    a.freeContigFrozenRange(p, count: 512)
    #expect(a.freePageCount == start)
    #expect(a.badPageCount == 0)
    try a.verify()
  }

  @Test func bypassPathsKeepTheAllocatorConsistent() throws {
    let a = try PageAllocator(configuration: .normal(pages: 1 << 15, backing: .none))
    let start = a.freePageCount
    var pages: [PFN] = []
    for _ in 0..<100 { pages.append(try #require(a.allocPagesBypassingPcp(order: 0, gfp: .kernel))) }
    #expect(a.pcpPageCount == 0)
    #expect(Set(pages).count == 100)
    #expect(a.refcount(of: pages[0]) == 1)
    for p in pages { a.freePagesBypassingPcp(p, order: 0) }
    #expect(a.pcpPageCount == 0)
    #expect(a.freePageCount == start)
    // A still-referenced page is not freed; the last put frees it.
    let q = try #require(a.allocPagesBypassingPcp(order: 0, gfp: .kernel))
    a.getPage(q)
    a.freePagesBypassingPcp(q, order: 0)
    #expect(a.refcount(of: q) == 1)
    a.putPage(q)
    a.drainAllPages()
    #expect(a.freePageCount == start)
    #expect(a.badPageCount == 0)
    try a.verify()
  }

  @Test func splitFrozenBlock() throws {
    let a = try PageAllocator(configuration: .normal(pages: 1 << 15, backing: .none))
    let start = a.freePageCount
    let p = try #require(a.allocFrozenPages(order: 4, gfp: .kernel))
    #expect(!a.splitFrozenBlock(p, order: 3))
    #expect(a.splitFrozenBlock(p, order: 4))
    for i in 0..<16 { a.freeFrozenPages(p + i, order: 0) }
    #expect(a.freePageCount == start)
    #expect(a.badPageCount == 0)
    try a.verify()
  }

  @Test func registryNamesAreUnique() {
    let names = BenchRegistry.suites.map(\.name)
    #expect(Set(names).count == names.count)
    #expect(
      names == [
        "high-order", "floor", "frozen-range", "order0", "thp", "bulk", "cma", "trace-overhead", "debug", "vmalloc",
        "compaction",
      ])
    #expect(BenchRegistry.suite(named: "nope") == nil)
  }

  /// The compaction suite on a small pool: every variant produces its figures, and the
  /// suite's own checks (tags intact, the pool whole again, verify) pass.
  @Test func compactionSuiteOnASmallPool() throws {
    let r = try CompactionBench.run(pages: 1 << 14)
    let byVariant = Dictionary(uniqueKeysWithValues: r.map { ($0.variant, $0) })
    #expect(
      Set(byVariant.keys) == ["none", "direct", "proactive", "compact-all", "contig-movable", "contig-free"])
    #expect(byVariant["none"]?.extra["blocks"] == 0)
    #expect((byVariant["direct"]?.extra["blocks"] ?? 0) > 0)
    #expect((byVariant["compact-all"]?.extra["share_recovered"] ?? 0) > 0.9)
    #expect(byVariant["contig-movable"]?.extra["pages_migrated"] == 1024)
    #expect(byVariant["contig-free"]?.extra["pages_migrated"] == 0)
    let ratios = Dictionary(uniqueKeysWithValues: BenchRegistry.ratios(for: r))
    #expect(ratios["compaction.contig_movable_over_free"] != nil)
  }
}

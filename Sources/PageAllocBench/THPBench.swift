@_spi(Benchmark) import PageAlloc
import _PageAllocUtilities

// 2 MiB blocks (the THP size, order 9): what a program that allocates and frees them pays
// per pair, next to the order-0 pair in the same run. A non-compound order-9 pair should
// cost about what an order-0 pair costs: both take one block off a per-CPU list and put
// one back, and without CONFIG_DEBUG_VM's page checks neither touches more than the head's
// record. A compound pair touches each tail once on allocation and once on free
// (prep_compound_page(), free_tail_page_prepare()); with `checkPages` every page is
// checked on both sides.

extension BenchSuite {
  /// `thp`: order-9 alloc+free pairs, non-compound and compound, with `checkPages` off and
  /// on, and the order-0 pair.
  public static let thp = BenchSuite(
    name: "thp",
    summary: "order-9 (2 MiB) alloc+free pairs: plain, compound, checkPages; order-0 pair",
    defaultIterations: 1_000_000, quickIterations: 50_000, iterationUnit: "alloc+free pairs",
    run: { try THPBench.run($0) },
    ratios: { THPBench.ratios($0) })
}

enum THPBench {
  static let name = "thp"

  enum Variant: String, CaseIterable {
    /// allocPages(order: 0) / freePages: the reference pair.
    case order0
    /// allocPages(order: 9) / freePages, checks off (the kernel's default).
    case pair
    /// The same with `.comp`: a compound page.
    case compound
    /// `pair` with `checkPages`.
    case pairChecked = "pair-checked"
    /// `compound` with `checkPages`.
    case compoundChecked = "compound-checked"

    var order: Int { self == .order0 ? 0 : PageGeometry.pageblockOrder }
    var checkPages: Bool { self == .pairChecked || self == .compoundChecked }
    var compound: Bool { self == .compound || self == .compoundChecked }
  }

  /// Passes over which the variants are interleaved, each keeping its fastest.
  static let passes = 5

  static func run(_ o: BenchOptions) throws -> [BenchResult] {
    let n = max(o.iterations(for: .thp), 1)
    let variants = Variant.allCases
    // One allocator per variant (the setting is the allocator's), kept over the passes:
    // 1 GiB of pfns, metadata only, with --quick too. (A smaller zone has a smaller pcp
    // `high`, and one order-9 block then fills it: every free drains and every allocation
    // refills under the zone lock, a different measurement.)
    let pages = 1 << 18
    var allocators: [Variant: (allocator: PageAllocator, startFree: Int)] = [:]
    for v in variants {
      do {
        let a = try PageAllocator(
          configuration: .init(
            zones: [ZoneConfiguration(kind: .normal, pfns: PFN(0)..<PFN(pages))], cpuCount: 2, backing: .none,
            checkPages: v.checkPages))
        allocators[v] = (a, a.freePageCount)
      } catch {
        throw BenchError(suite: name, "cannot create the allocator: \(error)")
      }
    }
    let span = 1.0 / Double(variants.count * passes)
    let best = try interleavedBest(variants, total: n, passes: passes) { v, count, step in
      try measure(o, allocators[v]!.allocator, v, count, progress: (Double(step) * span, span))
    }
    for v in variants {
      let (a, start) = allocators[v]!
      try benchCheck(a, startFree: start, suite: name, variant: v.rawValue, o)
    }
    return variants.map { v in
      let ns = best[v]!
      return BenchResult(
        suite: name, variant: v.rawValue, order: v.order, iterations: n, pagesPerIteration: 1 << v.order,
        totalNanoseconds: ns,
        extra: [
          "ns_per_pair": Double(ns) / Double(n), "check_pages": v.checkPages ? 1 : 0, "compound": v.compound ? 1 : 0,
        ])
    }
  }

  /// One pass of variant `v` with its thread pinned to one pcp set: a warm-up, then the
  /// timed pairs. The allocator is checked after the last pass (every page back, no bad
  /// page, `verify()`).
  static func measure(
    _ o: BenchOptions, _ a: PageAllocator, _ v: Variant, _ n: Int, progress: (Double, Double)
  ) throws -> UInt64 {
    let label = "\(name) \(v.rawValue)"
    let (ok, ns) = PageAllocator.withThreadCPU(0) { () -> (Bool, UInt64) in
      guard pairs(a, min(n, 10_000), v) else { return (false, 0) }
      var ok = true
      let ns = timedInChunks(o, label: label, total: n, progress: progress) { count in
        let t0 = monotonicNanoseconds()
        if !pairs(a, count, v) { ok = false }
        return monotonicNanoseconds() &- t0
      }
      return (ok, ns)
    }
    if !ok { throw benchAllocFailed(name, v.order) }
    return ns
  }

  /// `n` alloc+free pairs of variant `v`; false when an allocation failed. Each case calls
  /// with literal arguments, so the allocator's inlined paths fold them.
  @inline(never)
  static func pairs(_ a: PageAllocator, _ n: Int, _ v: Variant) -> Bool {
    var i = 0
    switch v {
    case .order0:
      while i < n {
        guard let p = a.allocPages(order: 0, gfp: .kernel) else { return false }
        a.freePages(p, order: 0)
        i &+= 1
      }
    case .pair, .pairChecked:
      while i < n {
        guard let p = a.allocPages(order: 9, gfp: .kernel) else { return false }
        a.freePages(p, order: 9)
        i &+= 1
      }
    case .compound, .compoundChecked:
      while i < n {
        guard let p = a.allocPages(order: 9, gfp: [.kernel, .comp]) else { return false }
        a.freePages(p, order: 9)
        i &+= 1
      }
    }
    return true
  }

  static func ratios(_ results: [BenchResult]) -> [(String, Double)] {
    let mine = results.filter { $0.suite == name }
    func ns(_ v: Variant) -> Double? { mine.first { $0.variant == v.rawValue }?.nsPerIteration }
    guard let order0 = ns(.order0), let pair = ns(.pair) else { return [] }
    var out: [(String, Double)] = [
      ("thp.ns_per_pair", pair), ("thp.pair_over_order0", pair / max(order0, 1e-9)),
    ]
    if let c = ns(.compound) { out.append(("thp.compound_over_pair", c / max(pair, 1e-9))) }
    if let pc = ns(.pairChecked) { out.append(("thp.checked_over_pair", pc / max(pair, 1e-9))) }
    return out
  }
}

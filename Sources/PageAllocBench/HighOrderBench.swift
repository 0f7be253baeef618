// The patch's own test (page_alloc_high_order_test in the series' cover letter):
//
//   for (i = 0; i < 100000; i++) {
//     page = alloc_pages(GFP_KERNEL, HPAGE_PMD_ORDER);
//     split_page(page, order);
//     free_contig_range(page_to_pfn(page), 1UL << order);
//   }
//
// "before" is free_contig_range as it was, one __free_page() per page (a putPage loop
// here); "after" is the chunked freeContigRange; "handle" is the same loop as "after"
// through the owned-page handles (allocate(order:) -> split() -> PageRun.free()). Each
// runs on a fresh allocator, timed around the whole loop as the patch did; the three run
// interleaved in passes and each keeps its fastest pass, so that noise on a shared machine
// does not land on one of them only.

@_spi(Benchmark) import PageAlloc
import _PageAllocUtilities
import PageAllocVMalloc
extension BenchSuite {
  /// `high-order`: alloc_pages(order) + split_page + free of the 2^order pages, freed page
  /// by page (`per-page`), as chunks (`contig`), and as chunks through the handles
  /// (`handle`).
  public static let highOrder = BenchSuite(
    name: "high-order",
    summary: "alloc+split+free at order K: per-page, contig, handles",
    defaultIterations: 100_000, quickIterations: 2_000, iterationUnit: "alloc+split+free of one block",
    run: { try HighOrderBench.run($0) },
    ratios: { HighOrderBench.ratios($0) })
}

enum HighOrderBench {
  static let name = "high-order"

  enum Variant: String, CaseIterable {
    case perPage = "per-page", contig, handle
  }

  static let passes = 5

  static func run(_ o: BenchOptions) throws -> [BenchResult] {
    let n = max(o.iterations(for: .highOrder), 1)
    var out: [BenchResult] = []
    let orders = o.orders
    for (k, order) in orders.enumerated() {
      guard (0...PageGeometry.maxOrder).contains(order) else {
        throw BenchError(suite: name, "order \(order) is outside 0...\(PageGeometry.maxOrder)")
      }
      let steps = Variant.allCases.count * passes
      let span = 1.0 / Double(orders.count * steps)
      let ns = try interleavedBest(Variant.allCases, total: n, passes: passes) { variant, count, step in
        try measure(o, order, count, variant, progress: (Double(k * steps + step) * span, span))
      }
      let per = ns[.perPage]!
      let contig = ns[.contig]!
      let handle = ns[.handle]!
      let pages = 1 << order
      let iterations = n
      out.append(
        BenchResult(
          suite: name, variant: "per-page", order: order, iterations: iterations, pagesPerIteration: pages,
          totalNanoseconds: per))
      out.append(
        BenchResult(
          suite: name, variant: "contig", order: order, iterations: iterations, pagesPerIteration: pages,
          totalNanoseconds: contig, extra: ["speedup": Double(per) / Double(max(contig, 1))]))
      out.append(
        BenchResult(
          suite: name, variant: "handle", order: order, iterations: iterations, pagesPerIteration: pages,
          totalNanoseconds: handle, extra: ["over_contig": Double(handle) / Double(max(contig, 1))]))
    }
    return out
  }

  /// One variant on a fresh allocator: a short warm-up, the timed loop, then the check.
  static func measure(
    _ o: BenchOptions, _ order: Int, _ n: Int, _ variant: Variant, progress: (Double, Double)
  ) throws -> UInt64 {
    let a = try benchAllocator(name)
    let start = a.freePageCount
    _ = try loop(a, order, min(n, 64), variant)
    try benchCheck(a, startFree: start, suite: name, variant: variant.rawValue, o)
    let t = try timedInChunks(
      o, label: "\(name) order \(order) \(variant.rawValue)", total: n, progress: progress
    ) {
      try loop(a, order, $0, variant)
    }
    try benchCheck(a, startFree: start, suite: name, variant: variant.rawValue, o)
    return t
  }

  /// The patch's loop; returns its wall time in nanoseconds.
  @inline(never)
  static func loop(_ a: PageAllocator, _ order: Int, _ n: Int, _ variant: Variant) throws -> UInt64 {
    let pages = 1 &<< order
    let t0 = monotonicNanoseconds()
    var i = 0
    switch variant {
    case .contig:
      while i < n {
        guard let p = a.allocPages(order: order, gfp: .kernel) else { throw benchAllocFailed(name, order) }
        a.splitPage(p, order: order)
        a.freeContigRange(p, count: pages)
        i &+= 1
      }
    case .perPage:
      while i < n {
        guard let p = a.allocPages(order: order, gfp: .kernel) else { throw benchAllocFailed(name, order) }
        a.splitPage(p, order: order)
        var j = 0
        while j < pages {
          a.putPage(p + j)
          j &+= 1
        }
        i &+= 1
      }
    case .handle:
      while i < n {
        let block: PageBlock
        do {
          block = try a.allocate(order: order)
        } catch {
          throw benchAllocFailed(name, order)
        }
        block.split().free()
        i &+= 1
      }
    }
    return monotonicNanoseconds() &- t0
  }

  static func ratios(_ results: [BenchResult]) -> [(String, Double)] {
    let mine = results.filter { $0.suite == name && $0.variant == "contig" }
    var out: [(String, Double)] = []
    let main = mine.first { $0.order == PageGeometry.pageblockOrder } ?? mine.first
    if let main, let s = main.extra["speedup"] { out.append(("high-order.speedup", s)) }
    if let main,
      let h = results.first(where: { $0.suite == name && $0.variant == "handle" && $0.order == main.order }),
      let x = h.extra["over_contig"]
    {
      out.append(("high-order.handle_over_contig", x))
    }
    if mine.count > 1 {
      for r in mine {
        if let o = r.order, let s = r.extra["speedup"] { out.append(("high-order.speedup.order-\(o)", s)) }
      }
    }
    return out
  }
}

/// Runs `body(count)` over `total` iterations in up to 20 chunks, summing the nanoseconds
/// each chunk returns and reporting progress between chunks (outside the timed parts).
func timedInChunks(
  _ o: BenchOptions, label: String, total: Int, progress: (base: Double, span: Double),
  _ body: (Int) throws -> UInt64
) rethrows -> UInt64 {
  let chunks = o.progress == nil ? 1 : min(20, max(total, 1))
  var done = 0
  var ns: UInt64 = 0
  for c in 0..<chunks {
    let upto = total * (c + 1) / chunks
    let count = upto - done
    if count > 0 { ns &+= try body(count) }
    done = upto
    o.report(label, progress.base + progress.span * Double(done) / Double(max(total, 1)))
  }
  return ns
}

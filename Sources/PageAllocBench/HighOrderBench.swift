// The patch's own test (page_alloc_high_order_test in the series' cover letter):
//
//   for (i = 0; i < 100000; i++) {
//     page = alloc_pages(GFP_KERNEL, HPAGE_PMD_ORDER);
//     split_page(page, order);
//     free_contig_range(page_to_pfn(page), 1UL << order);
//   }
//
// "before" is free_contig_range as it was, one __free_page() per page (a putPage loop
// here); "after" is the chunked freeContigRange. Both run in the same process, each on a
// fresh allocator, timed around the whole loop as the patch did.

@_spi(Benchmark) import PageAlloc
import _PageAllocUtilities
import PageAllocVMalloc
extension BenchSuite {
  /// `high-order`: alloc_pages(order) + split_page + free of the 2^order pages, freed page
  /// by page (`per-page`) and as chunks (`contig`).
  public static let highOrder = BenchSuite(
    name: "high-order",
    summary: "alloc+split+free at order K: putPage loop vs freeContigRange",
    defaultIterations: 100_000, quickIterations: 2_000, iterationUnit: "alloc+split+free of one block",
    run: { try HighOrderBench.run($0) },
    ratios: { HighOrderBench.ratios($0) })
}

enum HighOrderBench {
  static let name = "high-order"

  static func run(_ o: BenchOptions) throws -> [BenchResult] {
    let n = max(o.iterations(for: .highOrder), 1)
    var out: [BenchResult] = []
    let orders = o.orders
    for (k, order) in orders.enumerated() {
      guard (0...PageGeometry.maxOrder).contains(order) else {
        throw BenchError(suite: name, "order \(order) is outside 0...\(PageGeometry.maxOrder)")
      }
      let part = 1.0 / Double(orders.count)
      let base = Double(k) * part
      let per = try measure(o, order, n, contig: false, progress: (base, part / 2))
      let contig = try measure(o, order, n, contig: true, progress: (base + part / 2, part / 2))
      let pages = 1 << order
      out.append(BenchResult(suite: name, variant: "per-page", order: order, iterations: n, pagesPerIteration: pages, totalNanoseconds: per))
      out.append(
        BenchResult(
          suite: name, variant: "contig", order: order, iterations: n, pagesPerIteration: pages,
          totalNanoseconds: contig, extra: ["speedup": Double(per) / Double(max(contig, 1))]))
    }
    return out
  }

  /// One variant on a fresh allocator: a short warm-up, the timed loop, then the check.
  static func measure(
    _ o: BenchOptions, _ order: Int, _ n: Int, contig: Bool, progress: (Double, Double)
  ) throws -> UInt64 {
    let variant = contig ? "contig" : "per-page"
    let a = try benchAllocator(name)
    let start = a.freePageCount
    _ = try loop(a, order, min(n, 64), contig: contig)
    try benchCheckRestored(a, startFree: start, suite: name, variant: variant)
    let t = try timedInChunks(o, label: "\(name) order \(order) \(variant)", total: n, progress: progress) {
      try loop(a, order, $0, contig: contig)
    }
    try benchCheckRestored(a, startFree: start, suite: name, variant: variant)
    return t
  }

  /// The patch's loop; returns its wall time in nanoseconds.
  @inline(never)
  static func loop(_ a: PageAllocator, _ order: Int, _ n: Int, contig: Bool) throws -> UInt64 {
    let pages = 1 &<< order
    let t0 = monotonicNanoseconds()
    var i = 0
    if contig {
      while i < n {
        guard let p = a.allocPages(order: order, gfp: .kernel) else { throw benchAllocFailed(name, order) }
        a.splitPage(p, order: order)
        a.freeContigRange(p, count: pages)
        i &+= 1
      }
    } else {
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
    }
    return monotonicNanoseconds() &- t0
  }

  static func ratios(_ results: [BenchResult]) -> [(String, Double)] {
    let mine = results.filter { $0.suite == name && $0.variant == "contig" }
    var out: [(String, Double)] = []
    let main = mine.first { $0.order == PageGeometry.pageblockOrder } ?? mine.first
    if let main, let s = main.extra["speedup"] { out.append(("high-order.speedup", s)) }
    if mine.count > 1 {
      for r in mine { if let o = r.order, let s = r.extra["speedup"] { out.append(("high-order.speedup.order-\(o)", s)) } }
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

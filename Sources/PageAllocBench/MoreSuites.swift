// Suites whose kernels live with their features: vmalloc (VMallocBench.swift) and the
// cost of the trace points (TraceOverheadBench.swift).

@_spi(Benchmark) import PageAlloc
import _PageAllocUtilities
import PageAllocVMalloc
extension BenchSuite {
  /// `vmalloc`: lib/test_vmalloc.c's cases, vfree with the per-page and the bulk free, next
  /// to plain mmap/munmap and malloc/free with the same touches.
  public static let vmalloc = BenchSuite(
    name: "vmalloc",
    summary: "test_vmalloc.c cases: per-page vs bulk vfree, vs mmap and malloc",
    defaultIterations: 1, quickIterations: 1, iterationUnit: "runs of every case",
    run: { o in try VMallocBench.run(quick: o.quick, o) },
    ratios: { results in
      VMallocBench.ratios(results).flatMap { r -> [(String, Double)] in
        let key = "vmalloc." + r.test.replacingSpaces()
        return [
          (key + ".per_page_over_bulk", r.perPageOverBulk), (key + ".mmap_over_bulk", r.mmapOverBulk),
          (key + ".malloc_over_bulk", r.mallocOverBulk),
          (key + ".page_work_per_page_over_bulk", r.pagesPerPageOverBulk),
        ]
      }
    })

  /// `trace-overhead`: the order-9 freeContigRange loop with no trace sink, with a sink,
  /// and after the sink is removed: with no sink a trace point is one predictable branch.
  public static let traceOverhead: BenchSuite = BenchSuite(
    name: "trace-overhead",
    summary: "freeContigRange loop with no trace sink vs a sink installed",
    defaultIterations: 20_000, quickIterations: 1_000, iterationUnit: "order-9 alloc+split+free rounds",
    run: { o in try TraceOverheadBench.run(iterations: max(o.iterations ?? (o.quick ? 1_000 : 20_000), 1), o) },
    ratios: { results in
      results.filter { $0.suite == "trace-overhead" && $0.variant != "no-sink" && $0.variant != "tracepoint-no-sink" }
        .map { ("trace-overhead.\($0.variant).over_no_sink", $0.extra["ratio_vs_no_sink"] ?? 0) }
    })
}

extension String {
  fileprivate func replacingSpaces() -> String {
    String(map { $0 == " " || $0 == ":" ? "_" : $0 })
  }
}

extension BenchSuite {
  /// `cma`: 16384-page ranges taken with allocContigRange (isolation, drain, take, undo)
  /// and released page by page or with the chunked free, refcounted and frozen.
  public static let cma: BenchSuite = BenchSuite(
    name: "cma",
    summary: "16384-page allocContigRange ranges released per page vs freeContigRange",
    defaultIterations: 300, quickIterations: 10, iterationUnit: "16384-page ranges taken and released",
    run: { o in try CMABench.run(iterations: max(o.iterations ?? (o.quick ? 10 : 300), 1), o) },
    ratios: { results in
      func release(_ v: String) -> Double? {
        results.first { $0.suite == "cma" && $0.variant == v }?.extra["release_ns"]
      }
      var out: [(String, Double)] = []
      if let p = release("per-page"), let c = release("contig"), c > 0 { out.append(("cma.release_speedup", p / c)) }
      if let p = release("frozen-per-page"), let c = release("frozen-contig"), c > 0 {
        out.append(("cma.frozen_release_speedup", p / c))
      }
      return out
    })
}

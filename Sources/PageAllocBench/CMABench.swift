@_spi(Benchmark) import PageAlloc
import _PageAllocUtilities
import PageAllocVMalloc

/// The `cma` benchmark kernel: the series' CMA measurement (patch 3/3: 16384-page ranges
/// allocated through alloc_contig_range and released, 1406 µs -> 402 µs per iteration on
/// the authors' machine), in user space.
///
/// Each iteration allocates the 16384 pages `[16384, 32768)` of a 64 Ki-page Normal zone
/// with `PageAllocator.allocContigRange(_:gfp:)` (isolation, drain, take, undo) and
/// releases them. Variants:
/// - `per-page`: released one page at a time with `PageAllocator.putPage(_:)` (the
///   pre-series free_contig_range loop of `__free_page`);
/// - `contig`: released with `PageAllocator.freeContigRange(_:count:)` (chunked);
/// - `frozen-per-page` / `frozen-contig`: the frozen pair (CMA's own path):
///   `PageAllocator.allocContigFrozenRange(_:gfp:)` then `freeFrozenPages(_, order: 0)` per
///   page, or `PageAllocator.freeContigFrozenRange(_:count:)`.
///
/// `totalNanoseconds` covers allocation and release; `extra["alloc_ns"]` and
/// `extra["release_ns"]` split it per iteration. Memory backing is `.none` (metadata only).
public enum CMABench {
  public static let rangePages = 16384

  public static func run(iterations: Int) throws -> [BenchResult] {
    try run(iterations: iterations, BenchOptions())
  }

  /// ``run(iterations:)`` with the options of a `pagealloc bench` run (a sabotage, in the
  /// tests).
  package static func run(iterations: Int, _ o: BenchOptions) throws -> [BenchResult] {
    var out: [BenchResult] = []
    for variant in ["per-page", "contig", "frozen-per-page", "frozen-contig"] {
      out.append(try runVariant(variant, iterations: iterations, o))
    }
    return out
  }

  static func runVariant(_ variant: String, iterations: Int, _ o: BenchOptions) throws -> BenchResult {
    let a = try benchAllocator("cma")
    let start = a.freePageCount
    let n = rangePages
    let range = PFN(n)..<PFN(2 * n)
    let frozen = variant.hasPrefix("frozen")
    let contig = variant.hasSuffix("contig")
    // Warm up once (pcp lists, caches).
    try iterate(a, range, frozen: frozen, contig: contig)
    var allocNs: UInt64 = 0
    var releaseNs: UInt64 = 0
    for _ in 0..<iterations {
      let (al, rel) = try iterate(a, range, frozen: frozen, contig: contig)
      allocNs &+= al
      releaseNs &+= rel
    }
    // Every page back (allocContigRange drained the pcp lists; the frees refilled them:
    // freePageCount counts both), verify() clean, no bad-page report.
    try benchCheck(a, startFree: start, suite: "cma", variant: variant, o)
    let it = Double(max(iterations, 1))
    return BenchResult(
      suite: "cma", variant: variant, iterations: iterations, pagesPerIteration: n,
      totalNanoseconds: allocNs &+ releaseNs,
      extra: ["alloc_ns": Double(allocNs) / it, "release_ns": Double(releaseNs) / it])
  }

  @discardableResult
  static func iterate(_ a: PageAllocator, _ range: Range<PFN>, frozen: Bool, contig: Bool) throws -> (UInt64, UInt64) {
    let t0 = monotonicNanoseconds()
    if frozen {
      try a.allocContigFrozenRange(range, gfp: .kernel)
    } else {
      try a.allocContigRange(range, gfp: .kernel)
    }
    let t1 = monotonicNanoseconds()
    let start = range.lowerBound
    let n = range.count
    switch (frozen, contig) {
    case (false, true): a.freeContigRange(start, count: n)
    case (true, true): a.freeContigFrozenRange(start, count: n)
    case (false, false):
      for i in 0..<n { a.putPage(start + i) }
    case (true, false):
      for i in 0..<n { a.freeFrozenPages(start + i, order: 0) }
    }
    let t2 = monotonicNanoseconds()
    return (t1 &- t0, t2 &- t1)
  }
}

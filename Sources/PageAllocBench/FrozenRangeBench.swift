// The series' CMA case (patch 3/3): a range of 16384 frozen order-0 pages, as
// alloc_contig_frozen_range() hands them out, freed page by page with free_frozen_pages()
// ("per-page", the kernel before the patch) or at once with free_contig_frozen_range()
// ("contig"). Kernel figures: 1406 us -> 402 us per 16384 pages.
//
// Each iteration builds the range (untimed): order-10 frozen blocks are taken until 16
// of them are adjacent, the others are given back, and the 16 are split into frozen
// order-0 pages. Only the free is timed.

@_spi(Benchmark) import PageAlloc
import _PageAllocUtilities
import PageAllocVMalloc
extension BenchSuite {
  /// `frozen-range`: 16384-page frozen ranges, per-page freeFrozenPages vs
  /// freeContigFrozenRange.
  public static let frozenRange = BenchSuite(
    name: "frozen-range",
    summary: "16384-page CMA range: per-page vs freeContigFrozenRange",
    defaultIterations: 500, quickIterations: 20, iterationUnit: "16384-page ranges freed",
    run: { try FrozenRangeBench.run($0) },
    ratios: { FrozenRangeBench.ratios($0) })
}

enum FrozenRangeBench {
  static let name = "frozen-range"
  static let rangePages = 16384

  static func run(_ o: BenchOptions) throws -> [BenchResult] {
    let n = max(o.iterations(for: .frozenRange), 1)
    let per = try measure(o, n, contig: false, progress: (0, 0.5))
    let contig = try measure(o, n, contig: true, progress: (0.5, 0.5))
    return [
      BenchResult(
        suite: name, variant: "per-page", iterations: n, pagesPerIteration: rangePages, totalNanoseconds: per),
      BenchResult(
        suite: name, variant: "contig", iterations: n, pagesPerIteration: rangePages, totalNanoseconds: contig,
        extra: ["speedup": Double(per) / Double(max(contig, 1))]),
    ]
  }

  static func measure(_ o: BenchOptions, _ n: Int, contig: Bool, progress: (Double, Double)) throws -> UInt64 {
    let variant = contig ? "contig" : "per-page"
    let a = try benchAllocator(name, pages: 1 << 17)
    let start = a.freePageCount
    let label = "\(name) \(variant)"
    let t = try timedInChunks(o, label: label, total: n, progress: progress) { count in
      var ns: UInt64 = 0
      for _ in 0..<count {
        a.drainAllPages()
        let p = try takeFrozenRange(a)
        ns &+= free(a, p, contig: contig)
      }
      return ns
    }
    try benchCheck(a, startFree: start, suite: name, variant: variant, o)
    return t
  }

  @inline(never)
  static func free(_ a: PageAllocator, _ p: PFN, contig: Bool) -> UInt64 {
    let t0 = monotonicNanoseconds()
    if contig {
      a.freeContigFrozenRange(p, count: rangePages)
    } else {
      var i = 0
      while i < rangePages {
        a.freeFrozenPages(p + i, order: 0)
        i &+= 1
      }
    }
    return monotonicNanoseconds() &- t0
  }

  /// 16384 adjacent frozen order-0 pages: order-10 frozen blocks are taken until 16 are
  /// adjacent; the rest go back.
  static func takeFrozenRange(_ a: PageAllocator) throws -> PFN {
    let order = PageGeometry.maxOrder
    let need = rangePages >> order
    var heads: [Int] = []
    while true {
      guard let p = a.allocFrozenPages(order: order, gfp: [.kernel, .noWarn]) else {
        for h in heads { a.freeFrozenPages(PFN(h), order: order) }
        throw BenchError(suite: name, "no \(rangePages) adjacent pages could be taken")
      }
      let idx = heads.firstIndex { $0 > p.value } ?? heads.count
      heads.insert(p.value, at: idx)
      // The run of adjacent blocks through the new one.
      var lo = idx
      while lo > 0 && heads[lo - 1] == heads[lo] - (1 << order) { lo -= 1 }
      var hi = idx
      while hi + 1 < heads.count && heads[hi + 1] == heads[hi] + (1 << order) { hi += 1 }
      if hi - lo + 1 >= need {
        let run = heads[lo..<(lo + need)]
        for (i, h) in heads.enumerated() where i < lo || i >= lo + need {
          a.freeFrozenPages(PFN(h), order: order)
        }
        for h in run where !a.splitFrozenBlock(PFN(h), order: order) {
          throw BenchError(suite: name, "block \(PFN(h)) is not a frozen order-\(order) block")
        }
        return PFN(run.first!)
      }
    }
  }

  static func ratios(_ results: [BenchResult]) -> [(String, Double)] {
    guard let c = results.first(where: { $0.suite == name && $0.variant == "contig" }), let s = c.extra["speedup"]
    else { return [] }
    return [("frozen-range.speedup", s)]
  }
}

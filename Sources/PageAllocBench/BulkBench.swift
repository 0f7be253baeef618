// free_pages_bulk() over the page arrays vmalloc builds (vm_area_alloc_pages(): the
// largest order that fits what is left, split_page()d at once, falling back to lower
// orders), in mixed sizes, against a per-page putPage loop (vfree before the series).
// Each round builds one array per size (untimed) and frees them all (timed).

@_spi(Benchmark) import PageAlloc
import _PageAllocUtilities
import PageAllocVMalloc
extension BenchSuite {
  /// `bulk`: freePagesBulk over vmalloc-like arrays vs a per-page putPage loop.
  public static let bulk = BenchSuite(
    name: "bulk",
    summary: "freePagesBulk on vmalloc-like arrays vs putPage loop",
    defaultIterations: 2_000, quickIterations: 50, iterationUnit: "rounds of \(BulkBench.sizes.count) arrays",
    run: { try BulkBench.run($0) },
    ratios: { BulkBench.ratios($0) })
}

enum BulkBench {
  static let name = "bulk"
  /// Array sizes in pages of one round: single pages, small buffers, odd sizes that end
  /// in a tail of small blocks, and multi-MiB areas.
  static let sizes = [1, 2, 3, 8, 13, 64, 100, 255, 512, 1000, 1061, 2048, 4100]
  static var pagesPerRound: Int { sizes.reduce(0, +) }

  static func run(_ o: BenchOptions) throws -> [BenchResult] {
    let n = max(o.iterations(for: .bulk), 1)
    let per = try measure(o, n, bulk: false, progress: (0, 0.5))
    let bulk = try measure(o, n, bulk: true, progress: (0.5, 0.5))
    return [
      BenchResult(
        suite: name, variant: "per-page", iterations: n, pagesPerIteration: pagesPerRound, totalNanoseconds: per),
      BenchResult(
        suite: name, variant: "bulk", iterations: n, pagesPerIteration: pagesPerRound, totalNanoseconds: bulk,
        extra: ["speedup": Double(per) / Double(max(bulk, 1))]),
    ]
  }

  static func measure(_ o: BenchOptions, _ n: Int, bulk: Bool, progress: (Double, Double)) throws -> UInt64 {
    let variant = bulk ? "bulk" : "per-page"
    let a = try benchAllocator(name)
    let start = a.freePageCount
    let pages = UnsafeMutableBufferPointer<PFN>.allocate(capacity: pagesPerRound)
    defer { pages.deallocate() }
    let t = try timedInChunks(o, label: "\(name) \(variant)", total: n, progress: progress) { count in
      var ns: UInt64 = 0
      for _ in 0..<count {
        try fill(a, pages)
        ns &+= free(a, UnsafeBufferPointer(pages), bulk: bulk)
      }
      return ns
    }
    try benchCheck(a, startFree: start, suite: name, variant: variant, o)
    return t
  }

  /// Fills `pages` with one vmalloc-like array per size, back to back, built the way
  /// vmalloc builds them (``PageAllocator/allocVmallocPages(_:gfp:into:)``).
  static func fill(_ a: PageAllocator, _ pages: UnsafeMutableBufferPointer<PFN>) throws {
    var array: [PFN] = []
    array.reserveCapacity(pages.count)
    for size in sizes where a.allocVmallocPages(size, gfp: .kernel, into: &array) != size {
      throw benchAllocFailed(name, 0)
    }
    _ = pages.initialize(from: array)
  }

  @inline(never)
  static func free(_ a: PageAllocator, _ pages: UnsafeBufferPointer<PFN>, bulk: Bool) -> UInt64 {
    let t0 = monotonicNanoseconds()
    if bulk {
      var k = 0
      for size in sizes {
        a.freePagesBulk(UnsafeBufferPointer(rebasing: pages[k..<(k + size)]))
        k &+= size
      }
    } else {
      var i = 0
      let n = pages.count
      while i < n {
        a.putPage(pages[i])
        i &+= 1
      }
    }
    return monotonicNanoseconds() &- t0
  }

  static func ratios(_ results: [BenchResult]) -> [(String, Double)] {
    guard let b = results.first(where: { $0.suite == name && $0.variant == "bulk" }), let s = b.extra["speedup"]
    else { return [] }
    return [("bulk.speedup", s)]
  }
}

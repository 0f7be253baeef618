import Benchmark
@_spi(Benchmark) import PageAlloc
import PageAllocVMalloc

// The cases of `pagealloc bench`, with percentiles (one sample = one round), and the
// malloc-count benchmarks (their own configuration: mixing malloc counts with sampled
// metrics inflates the counts) whose threshold is zero mallocs.
//
// Run:   cd Benchmarks && swift package --allow-writing-to-package-directory benchmark --no-progress
// Check: swift package benchmark thresholds check --filter "malloc.*"

/// A fresh allocator per benchmark: one Normal zone of 2^16 pages (256 MiB), metadata only.
func makeAllocator(pages: Int = 1 << 16) -> PageAllocator {
  try! PageAllocator(configuration: .normal(pages: pages, cpuCount: 2, backing: .none))
}

/// Traps when a path left the allocator wrong: such a run must not report figures.
func check(_ a: PageAllocator, _ start: Int, _ what: String) {
  precondition(a.freePageCount == start && a.badPageCount == 0, "\(what): allocator not restored")
  try! a.verify()
}

let order = 9
let pages = 1 << order

let benchmarks: @Sendable () -> Void = {
  Benchmark.defaultConfiguration = .init(
    metrics: [.wallClock, .throughput], warmupIterations: 10, maxDuration: .milliseconds(1500), maxIterations: 1_000_000
  )

  // MARK: high-order: the patch's loop (alloc_pages order 9 + split_page + free)

  for contig in [false, true] {
    let a = makeAllocator()
    let start = a.freePageCount
    Benchmark(
      "high-order order-9 \(contig ? "contig" : "per-page")",
      configuration: .init(teardown: { check(a, start, "high-order") })
    ) { benchmark in
      for _ in benchmark.scaledIterations {
        let p = a.allocPages(order: order, gfp: .kernel)!
        a.splitPage(p, order: order)
        if contig {
          a.freeContigRange(p, count: pages)
        } else {
          for j in 0..<pages { a.putPage(p + j) }
        }
      }
    }
  }

  // MARK: free phase only (8 blocks of order 9): floor, contig, per-page

  for variant in ["floor", "contig", "per-page"] {
    let a = makeAllocator()
    let start = a.freePageCount
    Benchmark(
      "free-phase 8x order-9 \(variant)",
      configuration: .init(teardown: { check(a, start, "free-phase") })
    ) { benchmark in
      var heads: [PFN] = []
      heads.reserveCapacity(8)
      for _ in 0..<8 {
        let p = a.allocPages(order: order, gfp: .kernel)!
        a.splitPage(p, order: order)
        heads.append(p)
      }
      benchmark.startMeasurement()
      switch variant {
      case "floor":
        var ok = 0
        for h in heads { ok &+= a.freeFloorDrop(h, count: pages) }
        Benchmark.blackHole(ok)
      case "contig":
        for h in heads { a.freeContigRange(h, count: pages) }
      default:
        for h in heads { for j in 0..<pages { a.putPage(h + j) } }
      }
      benchmark.stopMeasurement()
      if variant == "floor" { for h in heads { a.freeContigFrozenRange(h, count: pages) } }
    }
  }

  // MARK: frozen-range: 16384 frozen order-0 pages (CMA)

  for contig in [false, true] {
    let a = makeAllocator(pages: 1 << 17)
    let start = a.freePageCount
    Benchmark(
      "frozen-range 16384 \(contig ? "contig" : "per-page")",
      configuration: .init(teardown: { check(a, start, "frozen-range") })
    ) { benchmark in
      a.drainAllPages()
      let p = takeFrozenRange(a)
      benchmark.startMeasurement()
      if contig {
        a.freeContigFrozenRange(p, count: 16384)
      } else {
        for i in 0..<16384 { a.freeFrozenPages(p + i, order: 0) }
      }
      benchmark.stopMeasurement()
    }
  }

  // MARK: order0: alloc+free pairs, through the pcp and bypassing it

  for bypass in [false, true] {
    let a = makeAllocator()
    let start = a.freePageCount
    Benchmark(
      "order0 pair \(bypass ? "bypass" : "pcp")",
      configuration: .init(scalingFactor: .kilo, teardown: { check(a, start, "order0") })
    ) { benchmark in
      orderZeroPairs(a, benchmark.scaledIterations.count, bypass: bypass)
    }
  }

  // MARK: bulk: vmalloc-like arrays, freePagesBulk vs per-page

  for bulk in [false, true] {
    let a = makeAllocator()
    let start = a.freePageCount
    let buffer = UnsafeMutableBufferPointer<PFN>.allocate(capacity: 16384)
    Benchmark(
      "bulk vmalloc-like \(bulk ? "freePagesBulk" : "per-page")",
      configuration: .init(teardown: { check(a, start, "bulk") })
    ) { benchmark in
      let n = fillVmallocLike(a, buffer)
      benchmark.startMeasurement()
      freeArrays(a, UnsafeBufferPointer(rebasing: buffer[0..<n]), bulk: bulk)
      benchmark.stopMeasurement()
    }
  }

  // MARK: malloc counts: zero in steady state (thresholds in Thresholds/)

  let zeroMallocs: [BenchmarkMetric: BenchmarkThresholds] = [
    .mallocCountTotal: .init(absolute: [.p0: 0, .p25: 0, .p50: 0, .p75: 0, .p90: 0, .p99: 0, .p100: 0])
  ]
  func mallocConfig(_ what: String, _ a: PageAllocator, _ start: Int) -> Benchmark.Configuration {
    .init(
      metrics: [.mallocCountTotal], warmupIterations: 10, scalingFactor: .kilo, maxDuration: .seconds(1),
      maxIterations: 200, thresholds: zeroMallocs, teardown: { check(a, start, what) })
  }
  do {
    let a = makeAllocator()
    let start = a.freePageCount
    Benchmark("malloc-order0-pcp-pair", configuration: mallocConfig("malloc", a, start)) { benchmark in
      orderZeroPairs(a, benchmark.scaledIterations.count, bypass: false)
    }
  }
  do {
    let a = makeAllocator()
    let start = a.freePageCount
    Benchmark("malloc-order0-bypass-pair", configuration: mallocConfig("malloc", a, start)) { benchmark in
      orderZeroPairs(a, benchmark.scaledIterations.count, bypass: true)
    }
  }
  do {
    let a = makeAllocator()
    let start = a.freePageCount
    Benchmark("malloc-high-order-contig", configuration: mallocConfig("malloc", a, start)) { benchmark in
      for _ in benchmark.scaledIterations {
        let p = a.allocPages(order: order, gfp: .kernel)!
        a.splitPage(p, order: order)
        a.freeContigRange(p, count: pages)
      }
    }
  }
  do {
    let a = makeAllocator()
    let start = a.freePageCount
    Benchmark("malloc-high-order-per-page", configuration: mallocConfig("malloc", a, start)) { benchmark in
      for _ in benchmark.scaledIterations {
        let p = a.allocPages(order: 3, gfp: .kernel)!
        a.splitPage(p, order: 3)
        for j in 0..<8 { a.putPage(p + j) }
      }
    }
  }
  do {
    let a = makeAllocator()
    let start = a.freePageCount
    let buffer = UnsafeMutableBufferPointer<PFN>.allocate(capacity: 64)
    Benchmark("malloc-free-pages-bulk", configuration: mallocConfig("malloc", a, start)) { benchmark in
      for _ in benchmark.scaledIterations {
        // A 37-page vmalloc-like array: 32 + 4 + 1.
        var k = 0
        for o in [5, 2, 0] {
          let p = a.allocPages(order: o, gfp: .kernel)!
          a.splitPage(p, order: o)
          for j in 0..<(1 << o) { buffer[k + j] = p + j }
          k += 1 << o
        }
        a.freePagesBulk(UnsafeBufferPointer(rebasing: buffer[0..<k]))
      }
    }
  }
}

// MARK: - Helpers (no allocation inside)

@inline(never)
func orderZeroPairs(_ a: PageAllocator, _ n: Int, bypass: Bool) {
  if bypass {
    for _ in 0..<n {
      let p = a.allocPagesBypassingPcp(order: 0, gfp: .kernel)!
      a.freePagesBypassingPcp(p, order: 0)
    }
  } else {
    for _ in 0..<n {
      let p = a.allocPages(order: 0, gfp: .kernel)!
      a.freePages(p, order: 0)
    }
  }
}

/// 16384 adjacent frozen order-0 pages from order-10 frozen blocks (see FrozenRangeBench).
func takeFrozenRange(_ a: PageAllocator) -> PFN {
  var heads: [Int] = []
  while true {
    let p = a.allocFrozenPages(order: 10, gfp: [.kernel, .noWarn])!
    heads.append(p.value)
    heads.sort()
    for i in 0..<heads.count where i + 16 <= heads.count && heads[i + 15] == heads[i] + 15 * 1024 {
      let run = heads[i..<(i + 16)]
      for h in heads where !run.contains(h) { a.freeFrozenPages(PFN(h), order: 10) }
      for h in run { precondition(a.splitFrozenBlock(PFN(h), order: 10)) }
      return PFN(heads[i])
    }
  }
}

let vmallocSizes = [1, 2, 3, 8, 13, 64, 100, 255, 512, 1000, 1061, 2048, 4100]

/// One vmalloc-like array per size, back to back; returns the page count.
func fillVmallocLike(_ a: PageAllocator, _ out: UnsafeMutableBufferPointer<PFN>) -> Int {
  // The arrays vmalloc builds (vm_area_alloc_pages), back to back.
  var array: [PFN] = []
  array.reserveCapacity(out.count)
  for size in vmallocSizes {
    precondition(a.allocVmallocPages(size, gfp: .kernel, into: &array) == size, "out of memory")
  }
  return out.initialize(from: array).index
}

@inline(never)
func freeArrays(_ a: PageAllocator, _ pages: UnsafeBufferPointer<PFN>, bulk: Bool) {
  if bulk {
    var k = 0
    for size in vmallocSizes {
      a.freePagesBulk(UnsafeBufferPointer(rebasing: pages[k..<(k + size)]))
      k += size
    }
  } else {
    for p in pages { a.putPage(p) }
  }
}

@_spi(Benchmark) import PageAlloc
import _PageAllocUtilities
import PageAllocVMalloc
import CPageAllocShim
import Glibc
import Synchronization

// Order-0 alloc/free pairs (alloc_page + __free_page): the per-CPU list fast path, on one
// thread and on N threads (each pinned to its own pcp set, as each CPU has its own), and
// the same pairs with the pcp lists bypassed (zone lock and buddy for every operation).

extension BenchSuite {
  /// `order0`: alloc/free pairs through the pcp (1 and N threads) and bypassing it.
  public static let order0 = BenchSuite(
    name: "order0",
    summary: "order-0 alloc+free pairs: pcp (1, N threads), no pcp",
    defaultIterations: 5_000_000, quickIterations: 200_000, iterationUnit: "alloc+free pairs per thread",
    run: { try Order0Bench.run($0) },
    ratios: { Order0Bench.ratios($0) })
}

enum Order0Bench {
  static let name = "order0"

  static func run(_ o: BenchOptions) throws -> [BenchResult] {
    let n = max(o.iterations(for: .order0), 1)
    let threads = max(o.threads, 1)
    var configs: [(variant: String, threads: Int, bypass: Bool)] = [("pcp", 1, false)]
    if threads > 1 { configs.append(("pcp-threads-\(threads)", threads, false)) }
    configs.append(("bypass", 1, true))
    if threads > 1 { configs.append(("bypass-threads-\(threads)", threads, true)) }
    var out: [BenchResult] = []
    for (k, c) in configs.enumerated() {
      let span = 1.0 / Double(configs.count)
      let wall = try measure(o, n, threads: c.threads, bypass: c.bypass, label: c.variant, progress: (Double(k) * span, span))
      let pairs = n * c.threads
      out.append(
        BenchResult(
          suite: name, variant: c.variant, order: 0, iterations: pairs, pagesPerIteration: 1, totalNanoseconds: wall,
          extra: [
            "threads": Double(c.threads),
            "pairs_per_second": Double(pairs) / (Double(max(wall, 1)) / 1e9),
            "ns_per_pair_per_thread": Double(wall) / Double(n),
          ]))
    }
    return out
  }

  /// Runs `n` pairs on each of `threads` threads; returns the wall time from the common
  /// start to the last thread's end.
  static func measure(
    _ o: BenchOptions, _ n: Int, threads: Int, bypass: Bool, label: String, progress: (Double, Double)
  ) throws -> UInt64 {
    let cpus = max(threads, PageAllocator.onlineCPUCount, 1)
    let a = try benchAllocator(name, cpuCount: cpus)
    let start = a.freePageCount
    let failed = Atomic<Int>(0)
    let wall: UInt64
    if threads == 1 {
      if !pairs(a, min(n, 10_000), bypass: bypass) { failed.wrappingAdd(1, ordering: .relaxed) }
      wall = timedInChunks(o, label: "\(name) \(label)", total: n, progress: progress) { count in
        let t0 = monotonicNanoseconds()
        if !pairs(a, count, bypass: bypass) { failed.wrappingAdd(1, ordering: .relaxed) }
        return monotonicNanoseconds() &- t0
      }
    } else {
      o.report("\(name) \(label)", progress.0)
      wall = try onThreads(a, n, threads, bypass: bypass)
      o.report("\(name) \(label)", progress.0 + progress.1)
    }
    if failed.load(ordering: .relaxed) != 0 { throw benchAllocFailed(name, 0) }
    try benchCheckRestored(a, startFree: start, suite: name, variant: label)
    return wall
  }

  /// `n` alloc+free pairs; false when an allocation failed.
  @inline(never)
  static func pairs(_ a: PageAllocator, _ n: Int, bypass: Bool) -> Bool {
    var i = 0
    if bypass {
      while i < n {
        guard let p = a.allocPagesBypassingPcp(order: 0, gfp: .kernel) else { return false }
        a.freePagesBypassingPcp(p, order: 0)
        i &+= 1
      }
    } else {
      while i < n {
        guard let p = a.allocPages(order: 0, gfp: .kernel) else { return false }
        a.freePages(p, order: 0)
        i &+= 1
      }
    }
    return true
  }

  static func onThreads(_ a: PageAllocator, _ n: Int, _ threads: Int, bypass: Bool) throws -> UInt64 {
    final class Shared: @unchecked Sendable {
      let ready = Atomic<Int>(0)
      let failed = Atomic<Int>(0)
      let starts: UnsafeMutablePointer<UInt64>
      let ends: UnsafeMutablePointer<UInt64>
      init(_ n: Int) {
        starts = .allocate(capacity: n)
        ends = .allocate(capacity: n)
      }
      deinit {
        starts.deallocate()
        ends.deallocate()
      }
    }
    let s = Shared(threads)
    do {
      try runOnThreads(threads) { t in
        PageAllocator.setThreadCPU(t)
        if !pairs(a, min(n, 10_000), bypass: bypass) { s.failed.wrappingAdd(1, ordering: .relaxed) }
        s.ready.wrappingAdd(1, ordering: .acquiringAndReleasing)
        while s.ready.load(ordering: .acquiring) < threads {}
        s.starts[t] = monotonicNanoseconds()
        if !pairs(a, n, bypass: bypass) { s.failed.wrappingAdd(1, ordering: .relaxed) }
        s.ends[t] = monotonicNanoseconds()
        PageAllocator.setThreadCPU(nil)
      }
    } catch {
      throw BenchError(suite: name, error.description)
    }
    if s.failed.load(ordering: .relaxed) != 0 { throw benchAllocFailed(name, 0) }
    var first = UInt64.max
    var last: UInt64 = 0
    for t in 0..<threads {
      first = min(first, s.starts[t])
      last = max(last, s.ends[t])
    }
    return last &- first
  }

  static func ratios(_ results: [BenchResult]) -> [(String, Double)] {
    let mine = results.filter { $0.suite == name }
    guard let pcp = mine.first(where: { $0.variant == "pcp" }) else { return [] }
    var out: [(String, Double)] = [("order0.ns_per_pair", pcp.nsPerIteration)]
    if let b = mine.first(where: { $0.variant == "bypass" }) {
      out.append(("order0.pcp_speedup", b.nsPerIteration / max(pcp.nsPerIteration, 1e-9)))
    }
    return out
  }
}

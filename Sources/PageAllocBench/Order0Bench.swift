@_spi(Benchmark) import PageAlloc
import _PageAllocUtilities
import PageAllocVMalloc
import CPageAllocShim
import Glibc
import Synchronization

// Order-0 alloc/free pairs (alloc_page + __free_page): the per-CPU list fast path, on one
// thread and on N threads (each pinned to its own pcp set, as each CPU has its own), the
// same pairs with the pcp lists bypassed (zone lock and buddy for every operation), and
// the same pairs through the owned-page handles (allocate() -> PageBlock.free()).

extension BenchSuite {
  /// `order0`: alloc/free pairs through the pcp (1 and N threads), bypassing it, and
  /// through the handles.
  public static let order0 = BenchSuite(
    name: "order0",
    summary: "order-0 alloc+free pairs: pcp (1, N threads), no pcp, handles",
    defaultIterations: 5_000_000, quickIterations: 200_000, iterationUnit: "alloc+free pairs per thread",
    run: { try Order0Bench.run($0) },
    ratios: { Order0Bench.ratios($0) })
}

enum Order0Bench {
  static let name = "order0"

  /// Which calls a pair makes.
  enum Path {
    /// allocPages / freePages: the PFN API, per-CPU lists.
    case pcp
    /// allocPagesBypassingPcp / freePagesBypassingPcp.
    case bypass
    /// allocate() / PageBlock.free(): the handles over the same path as `pcp`.
    case handle
  }

  /// The one-thread variants run interleaved in this many passes, each keeping its fastest
  /// pass, so that a burst of noise on a shared machine does not land on one variant only
  /// (handle_over_pfn compares two paths a few percent apart at most).
  static let passes = 5

  static func run(_ o: BenchOptions) throws -> [BenchResult] {
    let n = max(o.iterations(for: .order0), 1)
    let threads = max(o.threads, 1)
    let single: [(variant: String, path: Path)] = [("pcp", .pcp), ("bypass", .bypass), ("handle", .handle)]
    var multi: [(variant: String, path: Path)] = []
    if threads > 1 { multi = [("pcp-threads-\(threads)", .pcp), ("bypass-threads-\(threads)", .bypass)] }
    let steps = Double(single.count * passes + multi.count)
    let span = 1.0 / steps

    // One thread: the variants interleaved in passes.
    let best = try interleavedBest(single.map(\.variant), total: n, passes: passes) { variant, count, k in
      let path = single.first { $0.variant == variant }!.path
      return try measure(o, count, threads: 1, path, label: variant, progress: (Double(k) * span, span))
    }
    var step = Double(single.count * passes)
    var wall: [String: (ns: UInt64, pairs: Int, threads: Int)] = [:]
    for c in single { wall[c.variant] = (best[c.variant]!, n, 1) }
    for c in multi {
      let t = try measure(o, n, threads: threads, c.path, label: c.variant, progress: (step * span, span))
      step += 1
      wall[c.variant] = (t, n, threads)
    }

    var out: [BenchResult] = []
    let order = ["pcp"] + multi.prefix(1).map(\.variant) + ["bypass"] + multi.dropFirst().map(\.variant) + ["handle"]
    for variant in order {
      let w = wall[variant]!
      let pairs = w.pairs * w.threads
      var extra: [String: Double] = [
        "threads": Double(w.threads),
        "pairs_per_second": Double(pairs) / (Double(max(w.ns, 1)) / 1e9),
        "ns_per_pair_per_thread": Double(w.ns) / Double(w.pairs),
      ]
      if variant == "handle" { extra["over_pcp"] = Double(w.ns) / Double(max(wall["pcp"]!.ns, 1)) }
      out.append(
        BenchResult(
          suite: name, variant: variant, order: 0, iterations: pairs, pagesPerIteration: 1, totalNanoseconds: w.ns,
          extra: extra))
    }
    return out
  }

  /// Runs `n` pairs on each of `threads` threads, on a fresh allocator; returns the wall
  /// time from the common start to the last thread's end.
  static func measure(
    _ o: BenchOptions, _ n: Int, threads: Int, _ path: Path, label: String, progress: (Double, Double)
  ) throws -> UInt64 {
    let cpus = max(threads, PageAllocator.onlineCPUCount, 1)
    let a = try benchAllocator(name, cpuCount: cpus)
    let start = a.freePageCount
    let failed = Atomic<Int>(0)
    let wall: UInt64
    if threads == 1 {
      if !pairs(a, min(n, 10_000), path) { failed.wrappingAdd(1, ordering: .relaxed) }
      wall = timedInChunks(o, label: "\(name) \(label)", total: n, progress: progress) { count in
        let t0 = monotonicNanoseconds()
        if !pairs(a, count, path) { failed.wrappingAdd(1, ordering: .relaxed) }
        return monotonicNanoseconds() &- t0
      }
    } else {
      o.report("\(name) \(label)", progress.0)
      wall = try onThreads(a, n, threads, path)
      o.report("\(name) \(label)", progress.0 + progress.1)
    }
    if failed.load(ordering: .relaxed) != 0 { throw benchAllocFailed(name, 0) }
    try benchCheck(a, startFree: start, suite: name, variant: label, o)
    return wall
  }

  /// `n` alloc+free pairs; false when an allocation failed.
  @inline(never)
  static func pairs(_ a: PageAllocator, _ n: Int, _ path: Path) -> Bool {
    var i = 0
    switch path {
    case .bypass:
      while i < n {
        guard let p = a.allocPagesBypassingPcp(order: 0, gfp: .kernel) else { return false }
        a.freePagesBypassingPcp(p, order: 0)
        i &+= 1
      }
    case .pcp:
      while i < n {
        guard let p = a.allocPages(order: 0, gfp: .kernel) else { return false }
        a.freePages(p, order: 0)
        i &+= 1
      }
    case .handle:
      while i < n {
        let page: PageBlock
        do {
          page = try a.allocate()
        } catch {
          return false
        }
        page.free()
        i &+= 1
      }
    }
    return true
  }

  static func onThreads(_ a: PageAllocator, _ n: Int, _ threads: Int, _ path: Path) throws -> UInt64 {
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
        if !pairs(a, min(n, 10_000), path) { s.failed.wrappingAdd(1, ordering: .relaxed) }
        s.ready.wrappingAdd(1, ordering: .acquiringAndReleasing)
        while s.ready.load(ordering: .acquiring) < threads {}
        s.starts[t] = monotonicNanoseconds()
        if !pairs(a, n, path) { s.failed.wrappingAdd(1, ordering: .relaxed) }
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
    if let h = mine.first(where: { $0.variant == "handle" }) {
      out.append(("order0.handle_over_pfn", h.nsPerIteration / max(pcp.nsPerIteration, 1e-9)))
    }
    return out
  }
}

@_spi(Benchmark) import PageAlloc
import _PageAllocUtilities
import PageAllocVMalloc
import CPageAllocShim
import Synchronization

/// The cost of the trace points: the freeContigRange high-order loop (allocate an order-9
/// block, `splitPage`, `freeContigRange` of its 512 pages) with no sink installed, with a
/// sink that only counts events, and with no sink again after one was installed and
/// removed; plus the bare cost of a trace point with no sink: 512 `tracePageFree` calls
/// per iteration, loop overhead included (an upper bound; an empty comparison loop is
/// deleted by the optimizer, so none is reported).
///
/// With no sink each trace point is one relaxed load of `PageAllocator.tracing` and a
/// branch the predictor always gets right; freeContigRange reads the flag once per
/// section segment, not once per page. The figures show it: `no-sink` and
/// `no-sink-after-removal` match, `sink` pays for building and delivering every event.
public enum TraceOverheadBench {
  /// A sink that counts the events and drops them.
  final class CountingSink: TraceSink, @unchecked Sendable {
    let count = Atomic<Int>(0)
    func record(_ event: TraceEvent) { count.wrappingAdd(1, ordering: .relaxed) }
  }

  /// Runs each variant three times, interleaved, and keeps the fastest run of each.
  /// `iterations` is the number of order-9 alloc/split/free rounds per run.
  public static func run(iterations: Int) throws -> [BenchResult] {
    try run(iterations: iterations, BenchOptions())
  }

  /// ``run(iterations:)`` with the options of a `pagealloc bench` run (a sabotage, in the
  /// tests).
  package static func run(iterations: Int, _ o: BenchOptions) throws -> [BenchResult] {
    let name = "trace-overhead"
    let order = 9
    let pages = 1 << order
    let a = try benchAllocator(name, cpuCount: 1)
    let start = a.freePageCount
    PageAllocator.setThreadCPU(0)
    defer { PageAllocator.setThreadCPU(nil) }

    func loop(_ n: Int) throws -> UInt64 {
      let t0 = monotonicNanoseconds()
      for _ in 0..<n {
        guard let p = a.allocPages(order: order, gfp: .kernel) else { throw benchAllocFailed(name, order) }
        a.splitPage(p, order: order)
        a.freeContigRange(p, count: pages)
      }
      return monotonicNanoseconds() &- t0
    }

    // Trace points alone: 512 calls per iteration, tracing off.
    func tracepoints(_ n: Int) -> UInt64 {
      let t0 = monotonicNanoseconds()
      for i in 0..<n {
        var j = 0
        while j < pages {
          a.tracePageFreePoint(PFN(j))
          j &+= 1
        }
        blackHole(i)
      }
      return monotonicNanoseconds() &- t0
    }

    let sink = CountingSink()
    _ = try loop(max(iterations / 10, 1))  // warm up
    var best = [UInt64](repeating: .max, count: 4)
    var eventsPerIteration = 0.0
    for _ in 0..<3 {
      best[0] = min(best[0], try loop(iterations))
      a.setTraceSink(sink)
      let before = sink.count.load(ordering: .relaxed)
      best[1] = min(best[1], try loop(iterations))
      eventsPerIteration = Double(sink.count.load(ordering: .relaxed) - before) / Double(iterations)
      a.setTraceSink(nil)
      best[2] = min(best[2], try loop(iterations))
      best[3] = min(best[3], tracepoints(iterations))
    }
    // Every page back, verify() clean, no bad-page report; and the sink saw at least the
    // 512 mm_page_free events of each iteration (one per page freed).
    try benchCheck(a, startFree: start, suite: name, variant: "all", o)
    if eventsPerIteration < Double(pages) {
      throw BenchError(
        suite: name, "sink: \(eventsPerIteration) events per iteration, fewer than the \(pages) pages freed")
    }
    let base = Double(best[0])
    func result(_ variant: String, _ ns: UInt64, _ extra: [String: Double]) -> BenchResult {
      var e = extra
      e["ratio_vs_no_sink"] = Double(ns) / base
      return BenchResult(
        suite: "trace-overhead", variant: variant, order: order, iterations: iterations,
        pagesPerIteration: pages, totalNanoseconds: ns, extra: e)
    }
    let perCall = Double(best[3]) / Double(iterations * pages)
    return [
      result("no-sink", best[0], [:]),
      result("sink", best[1], ["events_per_iteration": eventsPerIteration]),
      result("no-sink-after-removal", best[2], [:]),
      result("tracepoint-no-sink", best[3], ["ns_per_tracepoint": perCall]),
    ]
  }
}

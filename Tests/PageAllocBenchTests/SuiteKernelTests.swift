import PageAlloc
import Testing

@testable import PageAllocBench
import PageAllocTestSupport

/// The kernels of the suites that have no BenchSuite wrapper test of their own.
@Suite struct SuiteKernelTests {
  @Test func cmaBenchRuns() throws {
    let r = try CMABench.run(iterations: 2)
    #expect(r.count == 4)
    #expect(r.allSatisfy { $0.pagesPerIteration == 16384 && $0.iterations == 2 })
  }

  @Test func traceOverheadBenchRuns() throws {
    let r = try TraceOverheadBench.run(iterations: 20)
    #expect(r.map(\.variant) == ["no-sink", "sink", "no-sink-after-removal", "tracepoint-no-sink"])
    #expect(r.allSatisfy { $0.suite == "trace-overhead" && $0.totalNanoseconds > 0 })
    // 512 mm_page_free + 1 mm_page_alloc + zone_locked/drain events per iteration.
    #expect(r[1].extra["events_per_iteration"]! >= 513)
  }
}

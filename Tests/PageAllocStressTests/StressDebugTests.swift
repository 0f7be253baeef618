@testable import PageAlloc
import Testing
import PageAllocTestSupport
@testable import PageAllocVMalloc
@testable import PageAllocStress

/// The whole API under every memory-debugging option at once: no path may touch a free
/// page's memory (debug_pagealloc would fault), none may leave poison behind unchecked,
/// and page_owner must end with nothing held.
@Suite struct StressDebugTests {
  @Test(arguments: [false, true])
  func theWorkloadRunsCleanWithEveryDebugOption(badFrees: Bool) throws {
    var c = StressConfiguration(
      threads: 2, operations: 12_000, seed: 5, badFreeRate: badFrees ? 0.01 : 0, faultPercent: 2,
      verifyEvery: 6_000, extensions: [VMallocStressExtension(weight: 5)])
    c.pageOwner = true
    var config = c.allocatorConfiguration
    #expect(config.pageOwner && config.backing == .memfd)
    config.debugPageAlloc = true
    config.poisonPages = true
    let a = try PageAllocator(configuration: config)
    #expect(a.isProtectingFreePages)
    let r = StressEngine.run(c, on: a)
    #expect(r.passed, "\(r)")
    #expect(a.isProtectingFreePages, "protection was given up (vm.max_map_count?)")
    #expect(!a.badPageReports.contains { $0.kind == .poisonCorrupted })
    let summary = try #require(r.pageOwnerSummary)
    #expect(summary.contains(" times, "))
    let leaks = try #require(r.leakReport)
    #expect(leaks.pages == r.quarantinedPages)
    if !badFrees { #expect(leaks.isEmpty, "\(leaks)") }
  }
}

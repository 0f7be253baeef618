@testable import PageAlloc
import Synchronization
import Testing
import PageAllocTestSupport
import _PageAllocUtilities
@testable import PageAllocVMalloc
@testable import PageAllocStress

@Suite struct StressTests {
  @Test func sameSeedSameSingleThreadRun() throws {
    let c = StressConfiguration(threads: 1, operations: 30_000, seed: 42, faultPercent: 2, verifyEvery: 10_000)
    let r1 = try StressEngine.run(c)
    let r2 = try StressEngine.run(c)
    #expect(r1.passed, "\(r1)")
    #expect(r1.deterministicFields == r2.deterministicFields)
    #expect(r1.operations == 30_000)
    #expect(r1.failuresInjected > 0)
    var c3 = c
    c3.seed = 43
    let r3 = try StressEngine.run(c3)
    #expect(r3.passed)
    #expect(r3.stateChecksum != r1.stateChecksum)
  }

  @Test func wellBehavedRunReportsNothingAndLeaksNothing() throws {
    let r = try StressEngine.run(StressConfiguration(threads: 1, operations: 40_000, seed: 7, verifyEvery: 5_000))
    #expect(r.passed, "\(r)")
    #expect(r.badPages == 0)
    #expect(r.pagesLeaked == 0)
    #expect(r.quarantinedPages == 0)
    #expect(r.verifications == 9)
    // Every API family ran.
    for k in [
      "alloc", "alloc-frozen", "alloc-bulk", "split", "get-put", "free-contig", "free-contig-frozen",
      "free-pages-bulk", "contig-pages", "put-page", "free-pages",
    ] {
      #expect((r.operationsByKind[k] ?? 0) > 0, "no \(k)")
    }
  }

  @Test func badFreeModeReportsEveryOneAndLosesNothing() throws {
    let r = try StressEngine.run(
      StressConfiguration(threads: 1, operations: 30_000, seed: 5, badFreeRate: 0.05, verifyEvery: 5_000))
    #expect(r.verifyError == nil)
    #expect(r.badFreesInjected > 1000)
    #expect(r.badFreesCaught == r.badFreesInjected)
    #expect(r.badFreeReports == r.badFreesInjected)
    #expect(r.badPages == r.badFreesInjected)
    #expect(r.unexpectedBadPages == 0)
    #expect(r.pagesLeaked == 0)
    for k in StressEngine.BadFree.allCases { #expect((r.badFreesByKind[k.rawValue] ?? 0) > 0, "no \(k)") }
  }

  @Test func twoThreadsBadFreeMode() throws {
    let r = try StressEngine.run(
      StressConfiguration(threads: 2, operations: 40_000, seed: 11, badFreeRate: 0.02, verifyEvery: 4_000))
    #expect(r.passed, "\(r)")
    #expect(r.badFreesInjected > 0)
  }

  final class CountingExtension: StressExtension, @unchecked Sendable {
    let name = "count"
    let weight = 10
    let steps = Atomic<Int>(0)
    let finishes = Atomic<Int>(0)
    func step(_ allocator: PageAllocator, thread: Int, random: inout StressRandom) {
      steps.wrappingAdd(1, ordering: .relaxed)
      if let p = allocator.allocPages(order: random.below(3), gfp: [.kernel, .noWarn]) {
        allocator.putPage(p)
      }
    }
    func finish(_ allocator: PageAllocator, thread: Int) { finishes.wrappingAdd(1, ordering: .relaxed) }
  }

  @Test func extensionHookRuns() throws {
    let e = CountingExtension()
    let r = try StressEngine.run(StressConfiguration(threads: 2, operations: 10_000, seed: 1, extensions: [e]))
    #expect(r.passed)
    #expect(e.steps.load(ordering: .relaxed) > 0)
    #expect(e.finishes.load(ordering: .relaxed) == 2)
    #expect((r.operationsByKind["ext:count"] ?? 0) == e.steps.load(ordering: .relaxed))
  }
}

/// Threads hammering one allocator directly (no gates), with verify() running alongside:
/// every page accounted for at the end.
@Suite struct StressConcurrencyTests {
  @Test(arguments: [2, 3])
  func mixedAllocFreeContigAccountsForEveryPage(threads: Int) throws {
    let a = try makeAllocator(pages: 1 << 15, cpus: 2)
    let contigs = Atomic<Int>(0)
    let allocs = Atomic<Int>(0)
    let invalid = Atomic<Int>(0)
    // verify() takes every lock, so it must see a consistent state while the workers run.
    let (verifyErrors, verifications) = try withVerifier(a, workers: threads, minimum: 20) { t in
      var rng = StressRandom(seed: UInt64(t + 1))
      var d = APISequence(a)
      for _ in 0..<6000 {
        let last = d.held.count - 1
        switch rng.below(12) {
        case 0..<4:
          if d.step(.alloc(order: rng.below(6), gfp: [.kernel, .noWarn], frozen: false)).outcome == .done {
            allocs.wrappingAdd(1, ordering: .relaxed)
          }
        case 4..<7:
          // The newest item; a block is split (then freed as a range) half the time.
          if rng.chance(0.5) { d.step(.split(pick: last)) }
          d.step(.free(pick: last, way: .plain, choice: 0))
        case 7:
          let n = 1 << (4 + rng.below(5))
          if d.step(.allocContig(count: n, gfp: [.kernel, .noWarn], frozen: rng.chance(0.5))).outcome == .done {
            contigs.wrappingAdd(1, ordering: .relaxed)
          }
        case 8:
          d.step(.free(pick: last, way: rng.chance(0.5) ? .plain : .part, choice: rng.next()))
        case 9:
          let start = PFN(rng.below(1 << 15))
          let n = 1 + rng.below(600)
          if start.value + n <= 1 << 15,
            d.step(.allocContigRange(start..<(start + n), gfp: .kernel, frozen: false)).outcome == .invalid
          {
            // A range inside the zone with GFP_KERNEL is valid: busy or taken, never refused.
            invalid.wrappingAdd(1, ordering: .relaxed)
          }
        default:
          let before = d.held.count
          d.step(.allocBulk(count: 1 + rng.below(32), gfp: .kernel))
          if d.held.count > before { d.step(.free(pick: before, way: .plain, choice: 0)) }
        }
      }
      d.releaseAll()
    }
    #expect(verifyErrors == [])
    #expect(verifications >= 20)
    #expect(contigs.load(ordering: .relaxed) > 0)
    #expect(allocs.load(ordering: .relaxed) > threads * 1000)
    #expect(invalid.load(ordering: .relaxed) == 0)
    a.drainAllPages()
    try a.verify()
    #expect(a.badPageCount == 0)
    #expect(a.freePageCount == a.managedPageCount)
    #expect(a.zoneStatistics()[0].isolatedFreePages == 0)
    #expect(a.zoneStatistics()[0].pageblocksByType[MigrateType.isolate.rawValue] == 0)
  }
}

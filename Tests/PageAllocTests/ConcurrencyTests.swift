import PageAlloc
import PageAllocStress
import Testing
import PageAllocTestSupport
import _PageAllocUtilities

/// Two or more threads allocating and freeing at once; run also under ThreadSanitizer
/// (`swift test --sanitize=thread --filter ConcurrencyTests`).
@Suite struct ConcurrencyTests {
  /// One thread's share, with its own API-sequence driver: allocations (seven in ten of
  /// order 0), half of the higher ones split at once, and frees of random items in every
  /// well-behaved way (freeContigRange, freePagesBulk, putPage, freePages, page by page,
  /// the middle of a run); everything given back at the end.
  static func worker(_ a: PageAllocator, _ id: Int, rounds: Int) {
    var rng = TestRNG(seed: UInt64(id) &* 7919 &+ 1)
    var d = APISequence(a)
    for _ in 0..<rounds {
      if rng.below(10) < 5 || d.held.isEmpty {
        let order = rng.below(10) < 7 ? 0 : rng.below(10)
        let split = order > 0 && rng.chance(0.5)
        if d.step(.alloc(order: order, gfp: [.kernel, .noWarn], frozen: false)).outcome == .done && split {
          d.step(.split(pick: d.held.count - 1))
        }
      } else {
        let way = APISequence.FreeWay(rawValue: rng.below(4))!
        d.step(.free(pick: rng.below(d.held.count), way: way, choice: rng.next()))
      }
    }
    d.releaseAll()
  }

  @Test(arguments: [2, 4]) func threadsAllocateAndFreeAtOnce(threads: Int) throws {
    let a = try makeAllocator(pages: 1 << 15, cpus: 2, section: 1024)
    let verifyErrors = LockedState<[String]>([])
    // The last thread verifies while the workers run: verify() takes every lock, so it
    // sees a consistent state.
    try runOnThreads(threads + 1) { t in
      guard t < threads else {
        for _ in 0..<3 {
          do { try a.verify() } catch { verifyErrors.withLock { $0.append("\(error)") } }
        }
        return
      }
      Self.worker(a, t, rounds: 4000)
    }
    #expect(verifyErrors.withLock { $0 } == [])
    a.drainAllPages()
    try a.verify()
    #expect(a.badPageCount == 0)
    #expect(a.freePageCount == a.managedPageCount)
  }
}

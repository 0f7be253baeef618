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
  /// the middle of a run); everything given back at the end. Returns how many allocations
  /// succeeded.
  static func worker(_ a: PageAllocator, _ id: Int, rounds: Int) -> Int {
    var rng = TestRNG(seed: UInt64(id) &* 7919 &+ 1)
    var d = APISequence(a)
    var allocated = 0
    for _ in 0..<rounds {
      if rng.below(10) < 5 || d.held.isEmpty {
        let order = rng.below(10) < 7 ? 0 : rng.below(10)
        let split = order > 0 && rng.chance(0.5)
        if d.step(.alloc(order: order, gfp: [.kernel, .noWarn], frozen: false)).outcome == .done {
          allocated += 1
          if split { d.step(.split(pick: d.held.count - 1)) }
        }
      } else {
        let way = APISequence.FreeWay(rawValue: rng.below(4))!
        d.step(.free(pick: rng.below(d.held.count), way: way, choice: rng.next()))
      }
    }
    d.releaseAll()
    return allocated
  }

  @Test(arguments: [2, 4]) func threadsAllocateAndFreeAtOnce(threads: Int) throws {
    let a = try makeAllocator(pages: 1 << 15, cpus: 2)
    let allocated = LockedState<[Int]>([])
    // verify() takes every lock, so it sees a consistent state while the workers run.
    let (errors, verifications) = try withVerifier(a, workers: threads) { t in
      let n = Self.worker(a, t, rounds: 4000)
      allocated.withLock { $0.append(n) }
    }
    #expect(errors == [])
    #expect(verifications >= 3)
    // Half the rounds allocate; 32768 pages are far more than the threads hold: nearly
    // every allocation succeeds.
    let counts = allocated.withLock { $0 }
    #expect(counts.count == threads)
    #expect(counts.allSatisfy { $0 > 1500 }, "allocations per thread: \(counts)")
    a.drainAllPages()
    try a.verify()
    #expect(a.badPageCount == 0)
    #expect(a.freePageCount == a.managedPageCount)
  }
}

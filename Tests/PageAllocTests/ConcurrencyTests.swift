@testable import PageAlloc
import Glibc
import Testing
import PageAllocTestSupport

/// Two or more threads allocating and freeing at once; run also under ThreadSanitizer
/// (`swift test --sanitize=thread --filter ConcurrencyTests`).
@Suite struct ConcurrencyTests {
  final class Box: @unchecked Sendable {
    let a: PageAllocator
    let threads: Int
    let rounds: Int
    init(_ a: PageAllocator, threads: Int, rounds: Int) {
      self.a = a
      self.threads = threads
      self.rounds = rounds
    }
  }

  static func worker(_ box: Box, _ id: Int) {
    let a = box.a
    var rng = TestRNG(seed: UInt64(id) &* 7919 &+ 1)
    var mine: [(PFN, Int, Bool)] = []  // (head, order, split)
    for _ in 0..<box.rounds {
      let r = rng.next() % 10
      if r < 5 || mine.isEmpty {
        let order = Int(rng.next() % 10) < 7 ? 0 : Int(rng.next() % 10)
        if let p = a.allocPages(order: order, gfp: [.kernel, .noWarn]) {
          let split = order > 0 && rng.next() % 2 == 0
          if split { a.splitPage(p, order: order) }
          mine.append((p, order, split))
        }
      } else {
        let i = Int(rng.next() % UInt64(mine.count))
        let (p, o, split) = mine.remove(at: i)
        if split {
          if rng.next() % 2 == 0 {
            a.freeContigRange(p, count: 1 << o)
          } else {
            a.freePagesBulk((0..<(1 << o)).map { p + $0 })
          }
        } else if o == 0 {
          a.putPage(p)
        } else {
          a.freePages(p, order: o)
        }
      }
    }
    for (p, o, split) in mine {
      if split { a.freeContigRange(p, count: 1 << o) } else { a.freePages(p, order: o) }
    }
  }

  @Test(arguments: [2, 4]) func threadsAllocateAndFreeAtOnce(threads: Int) throws {
    let a = try makeAllocator(pages: 1 << 15, cpus: 2, section: 1024)
    let box = Box(a, threads: threads, rounds: 4000)
    var tids: [pthread_t] = []
    for id in 0..<threads {
      var t = pthread_t()
      let ctx = Unmanaged.passRetained(Ctx(box: box, id: id)).toOpaque()
      let rc = pthread_create(
        &t, nil,
        { raw in
          let c = Unmanaged<Ctx>.fromOpaque(raw!).takeRetainedValue()
          ConcurrencyTests.worker(c.box, c.id)
          return nil
        }, ctx)
      #expect(rc == 0)
      tids.append(t)
    }
    // Verify while the workers run: it takes every lock, so it sees a consistent state.
    for _ in 0..<3 { try a.verify() }
    for t in tids { pthread_join(t, nil) }
    a.drainAllPages()
    try a.verify()
    #expect(a.badPageCount == 0)
    #expect(a.freePageCount == a.managedPageCount)
  }

  final class Ctx {
    let box: Box
    let id: Int
    init(box: Box, id: Int) {
      self.box = box
      self.id = id
    }
  }
}

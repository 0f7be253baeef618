@testable import PageAlloc
import PropertyBased
import Testing
import PageAllocTestSupport

/// Random sequences of every API call, `verify()` after each step, and free + allocated +
/// quarantined = managed at the end.
@Suite struct PropertyTests {
  enum Held {
    case block(order: Int, compound: Bool, frozen: Bool)
    case page(refs: Int32)
  }

  /// Runs one decoded sequence. Each op is an integer: low bits pick the call, high bits
  /// its argument.
  static func run(_ ops: [Int], pages: Int = 8192, section: Int = 1024) throws {
    let a = try makeAllocator(pages: pages, cpus: 2, section: section)
    var held: [Int: Held] = [:]  // by pfn
    func take(_ x: Int) -> (Int, Held)? {
      guard !held.isEmpty else { return nil }
      let keys = held.keys.sorted()
      let k = keys[x % keys.count]
      return (k, held[k]!)
    }
    for op in ops {
      let arg = op >> 4
      switch op & 15 {
      case 0, 1:
        let order = arg % 11
        let kind = (arg / 11) % 3
        let gfp: GFP = [kind == 1 ? [.kernel, .comp] : .kernel, .noWarn]
        let p = kind == 2 ? a.allocFrozenPages(order: order, gfp: gfp) : a.allocPages(order: order, gfp: gfp)
        if let p { held[p.value] = .block(order: order, compound: kind == 1, frozen: kind == 2) }
      case 2:
        if let (p, h) = take(arg), case .block(let o, let c, let f) = h {
          if f { a.freeFrozenPages(PFN(p), order: o) } else if c { a.putPage(PFN(p)) } else { a.freePages(PFN(p), order: o) }
          held[p] = nil
        }
      case 3:
        if let (p, h) = take(arg), case .block(let o, false, false) = h {
          a.splitPage(PFN(p), order: o)
          held[p] = nil
          for i in 0..<(1 << o) { held[p + i] = .page(refs: 1) }
        }
      case 4:
        if let (p, h) = take(arg), case .page(let r) = h {
          a.getPage(PFN(p))
          held[p] = .page(refs: r + 1)
        }
      case 5:
        if let (p, h) = take(arg), case .page(let r) = h {
          a.putPage(PFN(p))
          held[p] = r > 1 ? .page(refs: r - 1) : nil
        }
      case 6, 7:
        // freeContigRange over a run of our order-0 pages.
        if let (p, h) = take(arg), case .page = h {
          var n = 0
          while case .page(let r)? = held[p + n], n < 2048 {
            held[p + n] = r > 1 ? .page(refs: r - 1) : nil
            n += 1
          }
          a.freeContigRange(PFN(p), count: n)
        }
      case 8:
        // freePagesBulk over some of our pages, in ascending order.
        let pages = held.compactMap { k, v -> Int? in if case .page(1) = v { return k } else { return nil } }.sorted()
        let pick = pages.enumerated().filter { ($0.offset + arg) % 3 != 0 }.map { $0.element }
        for p in pick { held[p] = nil }
        a.freePagesBulk(pick.map { PFN($0) })
      case 9:
        if let (p, h) = take(arg), case .block(let o, false, true) = h {
          a.freeContigFrozenRange(PFN(p), count: 1 << o)
          held[p] = nil
        }
      case 10:
        a.drainAllPages()
      case 11:
        // A speculative reference then free_pages (test_free_pages.c).
        if let (p, h) = take(arg), case .block(let o, false, false) = h {
          a.getPage(PFN(p))
          a.freePages(PFN(p), order: o)
          held[p] = .page(refs: 1)
        }
      case 12:
        var pages: [PFN] = []
        a.allocPagesBulk(count: arg % 40, gfp: .kernel, into: &pages)
        for p in pages { held[p.value] = .page(refs: 1) }
      default:
        PageAllocator.setThreadCPU(arg % 2)
      }
      try a.verify()
      #expect(a.badPageCount == 0)
    }
    PageAllocator.setThreadCPU(nil)
    var inUse = 0
    for (_, h) in held {
      switch h {
      case .block(let o, _, _): inUse += 1 << o
      case .page: inUse += 1
      }
    }
    #expect(a.freePageCount + inUse + a.quarantinedPageCount == a.managedPageCount)
    // Give everything back: all memory free and fully merged again.
    for (p, h) in held {
      switch h {
      case .block(let o, let c, let f):
        if f { a.freeFrozenPages(PFN(p), order: o) } else if c { a.putPage(PFN(p)) } else { a.freePages(PFN(p), order: o) }
      case .page(let r): for _ in 0..<r { a.putPage(PFN(p)) }
      }
    }
    a.drainAllPages()
    try a.verify()
    #expect(a.freePageCount == a.managedPageCount)
    #expect(blocks(a.freeBlocks()) == blocks(canonicalBlocks(free: Array(0..<pages), sectionPages: section)))
  }

  @Test func randomSequencesOfEveryCall() async {
    await propertyCheck(count: 60, input: Gen.int(in: 0...(1 << 16)).array(of: 1...120)) { ops in
      do { try Self.run(ops) } catch { Issue.record(error) }
    }
  }

  @Test func aLongFixedSequence() throws {
    var rng = TestRNG(seed: 42)
    try Self.run((0..<1500).map { _ in Int(rng.next() % (1 << 16)) })
  }
}

@testable import PageAlloc
import Testing
import PageAllocTestSupport

/// The differential oracle: the chunked free against the per-page free it replaced.
@Suite struct OracleTests {
  /// What the test owns: order-0 pages (with their refcount) and unsplit blocks.
  struct Model {
    var pages: [Int: Int32] = [:]
    var blocks: [Int: Int] = [:]
    var allocated: Set<Int> {
      var s = Set(pages.keys)
      for (h, o) in blocks { for i in 0..<(1 << o) { s.insert(h + i) } }
      return s
    }
  }

  /// Applies the same random history to every allocator given; returns the model.
  static func history(_ allocs: [PageAllocator], seed: UInt64, steps: Int) throws -> Model {
    var rng = TestRNG(seed: seed)
    var m = Model()
    let gfps: [GFP] = [.kernel, .highUserMovable, [.kernel, .reclaimable], .atomic]
    for _ in 0..<steps {
      let r = Int(rng.next() % 100)
      if r < 45 {
        let order = Int(rng.next() % 11)
        let gfp = gfps[Int(rng.next() % 4)].union(.noWarn)
        let got = allocs.map { $0.allocPages(order: order, gfp: gfp) }
        #expect(Set(got.map { $0?.value ?? -1 }).count == 1, "allocators diverged")
        guard let p = got[0] else { continue }
        if rng.next() % 3 != 0 {
          for a in allocs { a.splitPage(p, order: order) }
          for i in 0..<(1 << order) { m.pages[p.value + i] = 1 }
        } else {
          m.blocks[p.value] = order
        }
      } else if r < 65, let (h, o) = m.blocks.randomElement(using: &rng) {
        for a in allocs { a.freePages(PFN(h), order: o) }
        m.blocks[h] = nil
      } else if r < 90, !m.pages.isEmpty {
        // Free a random contiguous run of our pages, page by page.
        let keys = m.pages.keys.sorted()
        var i = Int(rng.next() % UInt64(keys.count))
        let n = Int(rng.next() % 40) + 1
        var done = 0
        while i < keys.count && done < n {
          let p = keys[i]
          for a in allocs { a.putPage(PFN(p)) }
          m.pages[p]! -= 1
          if m.pages[p]! == 0 { m.pages[p] = nil }
          i += 1
          done += 1
        }
      } else if !m.pages.isEmpty {
        let p = m.pages.keys.randomElement(using: &rng)!
        for a in allocs { a.getPage(PFN(p)) }
        m.pages[p]! += 1
      }
    }
    return m
  }

  @Test(arguments: 0..<24) func chunkedFreeMatchesPerPageFree(seed: Int) throws {
    let pages = 1 << 14
    let chunked = try makeAllocator(pages: pages, cpus: 1, section: 1024)
    let perPage = try makeAllocator(pages: pages, cpus: 1, section: 1024)
    var m = try Self.history([chunked, perPage], seed: UInt64(seed) &+ 101, steps: 300)
    // The range: a contiguous stretch of our order-0 pages (some with extra references).
    var rng = TestRNG(seed: UInt64(seed) &+ 7)
    let keys = m.pages.keys.sorted()
    try #require(!keys.isEmpty)
    var i = Int(rng.next() % UInt64(keys.count))
    let start = keys[i]
    while i + 1 < keys.count && keys[i + 1] == keys[i] + 1 && keys[i + 1] - start < 3000 { i += 1 }
    let count = keys[i] - start + 1
    chunked.freeContigRange(PFN(start), count: count)
    for p in start..<(start + count) { perPage.putPage(PFN(p)) }
    for p in start..<(start + count) {
      m.pages[p]! -= 1
      if m.pages[p]! == 0 { m.pages[p] = nil }
    }
    for a in [chunked, perPage] {
      #expect(a.badPageCount == 0)
      try a.verify()
      a.drainAllPages()
      try a.verify()
    }
    let free1 = blocks(chunked.freeBlocks())
    let free2 = blocks(perPage.freeBlocks())
    #expect(free1 == free2, "seed \(seed): range \(PFN(start)) + \(count)")
    let allocated = m.allocated
    let freeSet = (0..<pages).filter { !allocated.contains($0) }
    #expect(free1 == blocks(canonicalBlocks(free: freeSet, sectionPages: 1024)))
    #expect(chunked.freePageCount + allocated.count == chunked.managedPageCount)
    // Both refcounts agree page by page.
    for p in Swift.max(0, start - 64)..<Swift.min(pages, start + count + 64) {
      #expect(chunked.refcount(of: PFN(p)) == perPage.refcount(of: PFN(p)))
    }
  }

  /// The same for the bulk free of a vmalloc-like page array.
  @Test(arguments: 0..<8) func bulkFreeMatchesPerPageFree(seed: Int) throws {
    let chunked = try makeAllocator(pages: 1 << 14, cpus: 1, section: 1024)
    let perPage = try makeAllocator(pages: 1 << 14, cpus: 1, section: 1024)
    var rng = TestRNG(seed: UInt64(seed) &+ 3)
    var array: [PFN] = []
    var left = 2000 + Int(rng.next() % 2000)
    var maxOrder = 10
    while left > 0 {
      let order = Swift.min(maxOrder, (Int.bitWidth - 1) - left.leadingZeroBitCount)
      let got = [chunked, perPage].map { $0.allocPages(order: order, gfp: [.kernel, .noWarn]) }
      #expect(got[0] == got[1])
      guard let p = got[0] else {
        maxOrder = Swift.max(order - 1, 0)
        continue
      }
      for a in [chunked, perPage] { a.splitPage(p, order: order) }
      for k in 0..<(1 << order) { array.append(p + k) }
      left -= 1 << order
    }
    chunked.freePagesBulk(array)
    for p in array { perPage.putPage(p) }
    for a in [chunked, perPage] {
      a.drainAllPages()
      try a.verify()
      #expect(a.freePageCount == a.managedPageCount)
      #expect(a.badPageCount == 0)
    }
    #expect(blocks(chunked.freeBlocks()) == blocks(perPage.freeBlocks()))
  }
}

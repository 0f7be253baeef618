@testable import PageAlloc
import PageAllocStress
import Testing
import PageAllocTestSupport

/// The differential oracle: the chunked free against the per-page free it replaced.
@Suite struct OracleTests {
  /// Builds the same random history on every allocator given, one API-sequence driver
  /// each: allocations (two in three split into order-0 pages at once), frees of whole
  /// blocks, page-by-page frees of stretches of our order-0 pages, and extra references on
  /// them. Only per-page frees, so the history does not depend on the chunked free under
  /// test. Every call returns the same on every allocator, and the drivers' models stay
  /// equal. Picks come from the models, which list what is held in a fixed order, so a
  /// seed names one history.
  static func history(_ allocs: [PageAllocator], seed: UInt64, steps: Int) -> [APISequence] {
    var drivers = allocs.map { APISequence($0) }
    var rng = TestRNG(seed: seed)
    let gfps: [GFP] = [.kernel, .highUserMovable, [.kernel, .reclaimable], .atomic]
    @discardableResult func apply(_ op: APISequence.Op) -> APISequence.Step {
      let steps = drivers.indices.map { drivers[$0].step(op) }
      #expect(Set(steps).count == 1, "allocators diverged at \(op)")
      #expect(drivers.allSatisfy { $0.held == drivers[0].held }, "models diverged at \(op)")
      return steps[0]
    }
    for _ in 0..<steps {
      let held = drivers[0].held
      let blocks = held.items.indices.filter { if case .block = held[$0] { true } else { false } }
      let pages = held.items.indices.filter { if case .block = held[$0] { false } else { true } }
      let r = rng.below(100)
      if r < 45 {
        let split = rng.below(3) != 0
        let step = apply(.alloc(order: rng.below(11), gfp: gfps[rng.below(4)].union(.noWarn), frozen: false))
        // The new block is the last item.
        if step.outcome == .done && split { apply(.split(pick: drivers[0].held.count - 1)) }
      } else if r < 65, !blocks.isEmpty {
        apply(.free(pick: blocks[rng.below(blocks.count)], way: .plain, choice: 0))
      } else if r < 90, !pages.isEmpty {
        let pick = pages[rng.below(pages.count)]
        apply(.freeStretch(pick: pick, page: rng.below(1 << 10), count: 1 + rng.below(40), way: .perPage, choice: 0))
      } else if !pages.isEmpty {
        apply(.get(pick: pages[rng.below(pages.count)], page: rng.below(1 << 10)))
      }
    }
    return drivers
  }

  @Test(arguments: 0..<24) func chunkedFreeMatchesPerPageFree(seed: Int) throws {
    let pages = 1 << 14
    let chunked = try makeAllocator(pages: pages, cpus: 1, section: 1024)
    let perPage = try makeAllocator(pages: pages, cpus: 1, section: 1024)
    var d = Self.history([chunked, perPage], seed: UInt64(seed) &+ 101, steps: 300)
    // The range: a stretch of our order-0 pages (some with extra references), up to 3000.
    var rng = TestRNG(seed: UInt64(seed) &+ 7)
    let held = d[0].held
    let runs = held.items.indices.filter { if case .block = held[$0] { false } else { true } }
    try #require(!runs.isEmpty)
    let pick = runs[rng.below(runs.count)]
    let page = rng.below(1 << 10)
    let (range, _) = try #require(held.stretch(pick: pick, page: page, count: 3000))
    let chunks = chunksFreed(chunked) {
      d[0].step(.freeStretch(pick: pick, page: page, count: 3000, way: .plain, choice: 0))
    }
    d[1].step(.freeStretch(pick: pick, page: page, count: 3000, way: .perPage, choice: 0))
    #expect(d[0].held == d[1].held)
    // The chunked free handed on each run of the pages it freed (those of the range it no
    // longer holds) as the fewest aligned blocks, cut at the 1024-page sections; before any
    // drain, the chunked allocator's pcp lists hold no page of the range but as one of
    // those chunks, and the per-page one's only order-0 pages.
    let stillHeld = Set(d[0].held.allocatedPFNs())
    let freed = range.filter { !stillHeld.contains($0) }.map(\.value)
    #expect(chunks == expectedBulkChunks(freed, sectionPages: 1024), "seed \(seed)")
    #expect(
      chunked.pcpBlocks().filter { range.contains($0.pfn) }.allSatisfy { chunks.contains([$0.pfn.value, $0.order]) })
    #expect(perPage.pcpBlocks().filter { range.contains($0.pfn) }.allSatisfy { $0.order == 0 })
    for a in [chunked, perPage] {
      #expect(a.badPageCount == 0)
      try a.verify()
      a.drainAllPages()
      try a.verify()
    }
    let free1 = blocks(chunked.freeBlocks())
    let free2 = blocks(perPage.freeBlocks())
    #expect(free1 == free2, "seed \(seed): range \(range)")
    let allocated = Set(d[0].held.allocatedPFNs().map(\.value))
    let freeSet = (0..<pages).filter { !allocated.contains($0) }
    #expect(free1 == blocks(canonicalBlocks(free: freeSet, sectionPages: 1024)))
    #expect(chunked.freePageCount + allocated.count == chunked.managedPageCount)
    // Both refcounts agree page by page.
    for p in Swift.max(0, range.lowerBound.value - 64)..<Swift.min(pages, range.upperBound.value + 64) {
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

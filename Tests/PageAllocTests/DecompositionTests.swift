@testable import PageAlloc
import Testing
import PageAllocTestSupport

/// The chunked free's decomposition (`__free_contig_range`: the largest aligned chunks), exactly.
/// One CPU everywhere: every free lands on CPU 0's lists, whichever CPU runs the test.
@Suite(.serialized) struct DecompositionTests {
  @Test func workedExample0x1003Plus13() throws {
    let a = try makeAllocator()
    try claimExactly(a, 0x1003..<0x1010)
    let chunks = chunksFreed(a) { a.freeContigRange(0x1003, count: 13) }
    #expect(chunks == [[0x1003, 0], [0x1004, 2], [0x1008, 3]])
    // All pcp orders, far below high and with too few recent frees for free_high: they
    // sit on the pcp list, as they were freed.
    #expect(blocks(a.pcpBlocks()) == chunks)
    #expect(a.badPageCount == 0)
    try a.verify()
  }

  @Test func workedExample0x200Plus1536() throws {
    let a = try makeAllocator()
    try claimExactly(a, 0x200..<0x800)
    let chunks = chunksFreed(a) { a.freeContigRange(0x200, count: 1536) }
    #expect(chunks == [[0x200, 9], [0x400, 10]])
    // Order 9 is a pcp order (the THP list); order 10 is not: straight to the buddy, as two
    // pageblock pieces that merge again.
    #expect(blocks(a.pcpBlocks()) == [[0x200, 9]])
    let free = blocks(a.freeBlocks())
    #expect(free.contains([0x400, 10]))
    #expect(free.contains([0x000, 9]))
    try a.verify()
    a.drainAllPages()
    #expect(a.freePageCount == a.managedPageCount)
    #expect(blocks(a.freeBlocks()) == blocks(canonicalBlocks(free: Array(0..<65536), sectionPages: 1 << 15)))
  }

  @Test func workedExampleStillReferencedPage() throws {
    let a = try makeAllocator()
    try claimExactly(a, 0x100..<0x110)
    a.getPage(0x105)
    #expect(a.refcount(of: 0x105) == 2)
    let chunks = chunksFreed(a) { a.freeContigRange(0x100, count: 16) }
    #expect(chunks == [[0x100, 2], [0x104, 0], [0x106, 1], [0x108, 3]])
    #expect(a.refcount(of: 0x105) == 1)
    #expect(a.badPageCount == 0)  // a referenced page is skipped silently
    try a.verify()
    // The last holder frees it later; after a drain everything coalesces.
    #expect(a.putPage(0x105))
    a.drainAllPages()
    #expect(blocks(a.freeBlocks()) == blocks(canonicalBlocks(free: Array(0..<65536), sectionPages: 1 << 15)))
    try a.verify()
  }

  @Test func pfnZeroStartsAtMaxOrder() throws {
    let a = try makeAllocator()
    try claimExactly(a, 0..<1024)
    #expect(chunksFreed(a) { a.freeContigRange(0, count: 5) } == [[0, 2], [4, 0]])
    a.freeContigRange(5, count: 1019)
    a.drainAllPages()
    try a.verify()
    #expect(a.freePageCount == a.managedPageCount)
    // A fresh whole block at pfn 0: one order-10 chunk, to the buddy.
    try claimExactly(a, 0..<1024)
    #expect(chunksFreed(a) { a.freeContigRange(0, count: 1024) } == [[0, 10]])
    #expect(a.pcpBlocks().isEmpty)
    #expect(blocks(a.freeBlocks()).first == [0, 10])
    #expect(PageAllocator.chunks(of: 0..<1024).map { $0.order } == [10])
    #expect(PageAllocator.chunks(of: 0..<3).map { $0.order } == [1, 0])
  }

  @Test(arguments: 0...10) func everyOrder(order: Int) throws {
    let a = try makeAllocator()
    let before = a.freePageCount
    let head = try #require(a.allocPages(order: order, gfp: .kernel))
    #expect(head.value % (1 << order) == 0)
    a.splitPage(head, order: order)
    for i in 0..<(1 << order) { #expect(a.refcount(of: head + i) == 1) }
    let chunks = chunksFreed(a) { a.freeContigRange(head, count: 1 << order) }
    #expect(chunks == [[head.value, order]])
    if order == PageGeometry.pageblockOrder {
      // The refill took two THP blocks; with the chunk the pcp holds 1024 pages, over its
      // high of 640: the drain starts at the list just freed to and returns both.
      #expect(a.pcpBlocks().isEmpty)
    } else if pcpAllowedOrder(order) {
      #expect(blocks(a.pcpBlocks()).contains([head.value, order]))
    } else {
      #expect(!a.pcpBlocks().contains { $0.pfn == head })
    }
    #expect(a.freePageCount == before)
    try a.verify()
    a.drainAllPages()
    #expect(blocks(a.freeBlocks()) == blocks(canonicalBlocks(free: Array(0..<65536), sectionPages: 1 << 15)))
  }

  /// Every start misalignment 0..<16 and length 1...33 of a small range inside a block.
  @Test func everyMisalignment() throws {
    let a = try makeAllocator(pages: 1 << 14)
    try claimExactly(a, 0x1000..<0x1400)
    for s in 0..<16 {
      for n in 1...33 {
        let start = PFN(0x1000 + 64 + s)
        // Give back, check the chunks on the pcp, then take the same pages again.
        let chunks = chunksFreed(a) { a.freeContigRange(start, count: n) }
        let expected = expectedChunks(start.value..<(start.value + n))
        #expect(chunks == expected, "start +\(s) count \(n)")
        // Non-pcp orders went to the buddy; pcp orders to the pcp (or drained to the buddy).
        let onPcp = Set(blocks(a.pcpBlocks()))
        let inBuddy = Set(blocks(a.freeBlocks()))
        for c in expected {
          #expect(onPcp.contains(c) || inBuddy.contains(c) || !pcpAllowedOrder(c[1]), "chunk \(c)")
          if !pcpAllowedOrder(c[1]) { #expect(inBuddy.contains(c) && !onPcp.contains(c)) }
        }
        try a.verify()
        a.drainAllPages()
        try claimBack(a, start..<(start + n))
      }
    }
    #expect(a.badPageCount == 0)
  }

  /// Takes exactly `range` back out of the (drained) free lists.
  func claimBack(_ a: PageAllocator, _ range: Range<PFN>) throws {
    // Allocate order-0 pages until every page of the range is ours, return the others.
    var others: [PFN] = []
    var want = Set(range.map { $0.value })
    while !want.isEmpty {
      let p = try #require(a.allocPages(order: 0, gfp: .kernel))
      if want.remove(p.value) == nil { others.append(p) }
    }
    for p in others { a.putPage(p) }
    a.drainAllPages()
  }

  @Test func rangeCrossingSectionBoundaries() throws {
    // 1024-page sections: a 2000-page range crosses two boundaries; the records of each
    // section are separate arrays with an unmapped guard page between them, so a walk
    // that crossed with pointer arithmetic would fault.
    let a = try makeAllocator(pages: 8192, section: 1024)
    try claimExactly(a, 0x3f0..<0xbc0)
    let chunks = chunksFreed(a) { a.freeContigRange(0x3f0, count: 0xbc0 - 0x3f0) }
    // 0x3f0..0x400 | 0x400..0x800 (order 10 -> buddy) | 0x800..0xbc0
    #expect(
      chunks == [
        [0x3f0, 4], [0x400, 10], [0x800, 9], [0xa00, 8], [0xb00, 7], [0xb80, 6],
      ])
    #expect(blocks(a.freeBlocks()).contains([0x400, 10]))
    #expect(a.badPageCount == 0)
    try a.verify()
    a.drainAllPages()
    #expect(blocks(a.freeBlocks()) == blocks(canonicalBlocks(free: Array(0..<8192), sectionPages: 1024)))
  }

  @Test func rangeOverAHoleReportsTheHoleAndFreesTheRest() throws {
    let a = try makeAllocator(pages: 8192, section: 1024, holes: [1024..<2048])
    #expect(a.managedPageCount == 7168)
    #expect(!a.isPresent(1500))
    #expect(a.isPresent(2048))
    try claimExactly(a, 0..<1024)
    try claimExactly(a, 2048..<3072)
    a.freeContigRange(1000, count: 1100)  // 1000..<2100 spans the hole
    #expect(a.badPageCountsByKind[.outsideZones] == 1)
    for p in 0..<1000 { a.putPage(PFN(p)) }
    for p in 2100..<3072 { a.putPage(PFN(p)) }
    a.drainAllPages()
    try a.verify()
    #expect(a.freePageCount == 7168)
    #expect(a.badPageCount == 1)
  }
}

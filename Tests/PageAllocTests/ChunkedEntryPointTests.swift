import PageAlloc
import Testing
import PageAllocTestSupport

/// The chunks each chunked entry point of the series hands on, literally, and where they
/// land before any drain: `freePagesBulk` (sorted, shuffled, with a gap, across a section
/// boundary, broken by a referenced page, with a pfn twice) and `freeContigFrozenRange`
/// (aligned, misaligned, across a section). A per-page free ends in the same state after
/// `drainAllPages()`, so only the chunks and the pcp lists before the drain show that the
/// series' path ran. One CPU: every free lands on CPU 0's lists.
@Suite struct ChunkedEntryPointTests {
  /// The pcp-order chunks of `chunks` (orders 0-3 and 9: the ones a pcp list takes).
  func pcpOrderChunks(_ chunks: [[Int]]) -> [[Int]] {
    chunks.filter { $0[1] <= 3 || $0[1] == 9 }.sorted { $0[0] < $1[0] }
  }

  /// Frees `pfns` with freePagesBulk; the chunks, the pcp contents and the free state
  /// after a drain are checked by the caller.
  func bulk(_ a: PageAllocator, _ pfns: [Int]) -> [[Int]] {
    chunksFreed(a) { a.freePagesBulk(pfns.map { PFN($0) }) }
  }

  @Test func freePagesBulkSorted() throws {
    let a = try makeAllocator()
    try claimExactly(a, 0x1003..<0x1010)
    let chunks = bulk(a, Array(0x1003..<0x1010))
    #expect(chunks == [[0x1003, 0], [0x1004, 2], [0x1008, 3]])
    #expect(chunks == expectedChunks(0x1003..<0x1010))
    #expect(blocks(a.pcpBlocks()) == chunks)
    #expect(a.badPageCount == 0)
    try a.verify()
    a.drainAllPages()
    #expect(a.freePageCount == a.managedPageCount)
    #expect(blocks(a.freeBlocks()) == blocks(canonicalBlocks(free: Array(0..<65536), sectionPages: 1 << 15)))
  }

  /// Each ascending contiguous stretch of the array is one run, freed in array order.
  @Test func freePagesBulkShuffled() throws {
    let a = try makeAllocator()
    try claimExactly(a, 0x1000..<0x1010)
    let order = [
      0x1005, 0x1006, 0x1007, 0x1000, 0x1001, 0x1002, 0x1003, 0x1004, 0x100c, 0x100d, 0x100e, 0x100f, 0x1008,
      0x1009, 0x100a, 0x100b,
    ]
    let chunks = bulk(a, order)
    #expect(
      chunks == [
        [0x1005, 0], [0x1006, 1],  // 0x1005..<0x1008
        [0x1000, 2], [0x1004, 0],  // 0x1000..<0x1005
        [0x100c, 2],  // 0x100c..<0x1010
        [0x1008, 2],  // 0x1008..<0x100c
      ])
    #expect(blocks(a.pcpBlocks()) == pcpOrderChunks(chunks))
    #expect(a.badPageCount == 0)
    a.drainAllPages()
    try a.verify()
    #expect(a.freePageCount == a.managedPageCount)
  }

  @Test func freePagesBulkWithAGap() throws {
    let a = try makeAllocator()
    try claimExactly(a, 0x100..<0x108)
    let chunks = bulk(a, [0x100, 0x101, 0x103, 0x104, 0x105, 0x106, 0x107])
    #expect(chunks == [[0x100, 1], [0x103, 0], [0x104, 2]])
    // 0x102 was not in the array: still in use.
    #expect(a.refcount(of: 0x102) == 1)
    #expect(blocks(a.pcpBlocks()) == chunks)
    a.putPage(0x102)
    a.drainAllPages()
    try a.verify()
    #expect(a.freePageCount == a.managedPageCount)
  }

  /// `num_pages_contiguous()` stops at a section boundary (1024-page sections here).
  @Test func freePagesBulkAcrossASectionBoundary() throws {
    let a = try makeAllocator(pages: 8192, section: 1024)
    try claimExactly(a, 0x3f0..<0x810)
    let chunks = bulk(a, Array(0x3f0..<0x810))
    #expect(chunks == [[0x3f0, 4], [0x400, 10], [0x800, 4]])
    #expect(chunks == expectedChunks(0x3f0..<0x400, sectionPages: 1024) + expectedChunks(0x400..<0x810))
    // Order 4 and 10 are not pcp orders: straight to the buddy.
    #expect(a.pcpBlocks().isEmpty)
    #expect(a.badPageCount == 0)
    try a.verify()
    #expect(a.freePageCount == a.managedPageCount)
    #expect(blocks(a.freeBlocks()) == blocks(canonicalBlocks(free: Array(0..<8192), sectionPages: 1024)))
  }

  /// A page someone still holds closes the run; its last holder frees it later.
  @Test func freePagesBulkBrokenByAReferencedPage() throws {
    let a = try makeAllocator()
    try claimExactly(a, 0x100..<0x110)
    a.getPage(0x105)
    let chunks = bulk(a, Array(0x100..<0x110))
    #expect(chunks == [[0x100, 2], [0x104, 0], [0x106, 1], [0x108, 3]])
    #expect(chunks == expectedChunks(0x100..<0x105) + expectedChunks(0x106..<0x110))
    #expect(blocks(a.pcpBlocks()) == chunks)
    #expect(a.refcount(of: 0x105) == 1)
    #expect(a.badPageCount == 0)
    var freed = false
    let later = chunksFreed(a) { freed = a.putPage(0x105) }
    #expect(freed && later == [])
    #expect(blocks(a.pcpBlocks()) == [[0x100, 2], [0x104, 0], [0x105, 0], [0x106, 1], [0x108, 3]])
    a.drainAllPages()
    try a.verify()
    #expect(a.freePageCount == a.managedPageCount)
  }

  /// A pfn given twice: the second is a double free, reported, and frees nothing.
  @Test func freePagesBulkWithAPFNTwice() throws {
    let a = try makeAllocator()
    try claimExactly(a, 0x200..<0x204)
    let chunks = bulk(a, [0x200, 0x201, 0x201, 0x202, 0x203])
    #expect(chunks == [[0x200, 1], [0x202, 1]])
    #expect(a.badPageCountsByKind == [.doubleFree: 1])
    #expect(blocks(a.pcpBlocks()) == chunks)
    a.drainAllPages()
    try a.verify()
    #expect(a.freePageCount == a.managedPageCount)
  }

  // MARK: - freeContigFrozenRange

  @Test func frozenRangeMisaligned() throws {
    let a = try makeAllocator()
    try a.allocContigFrozenRange(PFN(0x1003)..<PFN(0x1010), gfp: .kernel)
    #expect(a.pcpBlocks().isEmpty)
    let chunks = chunksFreed(a) { a.freeContigFrozenRange(0x1003, count: 13) }
    #expect(chunks == [[0x1003, 0], [0x1004, 2], [0x1008, 3]])
    #expect(blocks(a.pcpBlocks()) == chunks)
    #expect(a.badPageCount == 0)
    a.drainAllPages()
    try a.verify()
    #expect(a.freePageCount == a.managedPageCount)
  }

  @Test func frozenRangeAligned() throws {
    let a = try makeAllocator()
    try a.allocContigFrozenRange(PFN(0x400)..<PFN(0x800), gfp: .kernel)
    let chunks = chunksFreed(a) { a.freeContigFrozenRange(0x400, count: 0x400) }
    #expect(chunks == [[0x400, 10]])
    // Order 10: not a pcp order, to the buddy (in pageblock pieces that merge again).
    #expect(a.pcpBlocks().isEmpty)
    #expect(blocks(a.freeBlocks()).contains([0x400, 10]))
    #expect(a.freePageCount == a.managedPageCount)
    try a.verify()
  }

  @Test func frozenRangeAcrossASection() throws {
    let a = try makeAllocator(pages: 8192, section: 1024)
    try a.allocContigFrozenRange(PFN(0x3f8)..<PFN(0x40c), gfp: .kernel)
    let chunks = chunksFreed(a) { a.freeContigFrozenRange(0x3f8, count: 0x14) }
    #expect(chunks == [[0x3f8, 3], [0x400, 3], [0x408, 2]])
    #expect(blocks(a.pcpBlocks()) == chunks)
    #expect(a.badPageCount == 0)
    a.drainAllPages()
    try a.verify()
    #expect(a.freePageCount == a.managedPageCount)
  }

  /// A frozen range with a page someone still references: that page is reported (a frozen
  /// page must have refcount 0) and closes the run.
  @Test func frozenRangeWithAReferencedPage() throws {
    let a = try makeAllocator()
    try claimExactly(a, 0x300..<0x308)
    for p in 0x300..<0x308 where p != 0x303 { a.putPage(PFN(p)) }
    a.drainAllPages()
    try a.allocContigFrozenRange(PFN(0x300)..<PFN(0x303), gfp: .kernel)
    try a.allocContigFrozenRange(PFN(0x304)..<PFN(0x308), gfp: .kernel)
    let chunks = chunksFreed(a) { a.freeContigFrozenRange(0x300, count: 8) }
    #expect(chunks == [[0x300, 1], [0x302, 0], [0x304, 2]])
    #expect(a.badPageCountsByKind == [.nonzeroRefcount: 1])
    #expect(a.isQuarantined(0x303))
    a.drainAllPages()
    try a.verify()
    #expect(a.freePageCount + a.quarantinedPageCount == a.managedPageCount)
  }
}

import PageAlloc
import PageAllocTestSupport
import PageAllocVMalloc
import Testing

/// vfree's two free paths against each other, before any drain: the bulk path
/// (`freePagesBulk`, the series' patch 2/3) hands the page array on as the largest aligned
/// chunks of its ascending runs, the per-page path hands on no chunk at all. After a drain
/// both leave the same free state.
@Suite struct VMallocChunkTests {
  /// An area of `pages` pages on a fresh allocator, on CPU 0; returns the allocator, the
  /// area's page array, the chunks vfree handed on and the pcp blocks right after it.
  func vfreeOnce(pages: Int, path: VMalloc.FreePath) throws -> (PageAllocator, [Int], [[Int]], [[Int]]) {
    try PageAllocator.withThreadCPU(0) {
      let (a, v) = try makeVMalloc()
      let p = try #require(v.vmalloc(pages * 4096))
      let array = try #require(v.pages(of: p)).map(\.value)
      var ok = false
      let chunks = chunksFreed(a) { ok = v.vfree(p, freePath: path) }
      #expect(ok)
      #expect(v.areaCount == 0 && v.vmallocPageCount == 0)
      return (a, array, chunks, blocks(a.pcpBlocks()))
    }
  }

  /// 600 pages: vm_area_alloc_pages takes an order-9, an order-6, an order-4 and an
  /// order-3 block (largest first) and splits them; the bulk free gives each back whole.
  @Test func bulkPathFreesTheBlocksItWasBuiltFrom() throws {
    let (a, pages, chunks, pcp) = try vfreeOnce(pages: 600, path: .bulk)
    #expect(chunks.map { $0[1] } == [9, 6, 4, 3])
    #expect(chunks == [[pages[0], 9], [pages[512], 6], [pages[576], 4], [pages[592], 3]])
    #expect(chunks == expectedBulkChunks(pages))
    // Orders 6 and 4 are not pcp orders: straight to the buddy. (The order-9 chunk takes
    // the pcp over high, and the drain that follows frees it to the buddy too.) No page of
    // the area is on a pcp list but as one of the chunks.
    #expect(!pcp.contains([pages[512], 6]) && !pcp.contains([pages[576], 4]))
    #expect(pcp.allSatisfy { !pages.contains($0[0]) || chunks.contains($0) })
    #expect(a.badPageCount == 0)
    try a.verify()
  }

  @Test(arguments: [1, 7, 13, 100, 513, 1000])
  func bulkAgainstPerPage(pages n: Int) throws {
    let (bulk, pages, chunks, pcpBulk) = try vfreeOnce(pages: n, path: .bulk)
    let (perPage, pages2, none, pcpPerPage) = try vfreeOnce(pages: n, path: .perPage)
    #expect(pages == pages2, "same allocator, same requests: the same page array")
    #expect(chunks == expectedBulkChunks(pages))
    #expect(none == [])
    // Before the drain the two paths differ: the per-page path put order-0 pages on the
    // pcp list; the bulk path only the chunks of pcp orders.
    #expect(pcpBulk.allSatisfy { chunks.contains($0) || !pages.contains($0[0]) })
    #expect(pcpPerPage.allSatisfy { $0[1] == 0 || !pages.contains($0[0]) })
    for a in [bulk, perPage] {
      #expect(a.badPageCount == 0)
      a.drainAllPages()
      try a.verify()
      #expect(a.freePageCount == a.managedPageCount)
    }
    #expect(blocks(bulk.freeBlocks()) == blocks(perPage.freeBlocks()))
  }
}

// The page side of vmalloc: how vm_area_alloc_pages() fills an area's page array. It lives
// with the allocator, not with VMalloc, so the bulk benchmarks (which need no mapped memory)
// build their arrays exactly as vmalloc does.

import PageAlloc
import _PageAllocUtilities
extension PageAllocator {
  /// `vm_area_alloc_pages()`: appends up to `n` order-0 pages (refcount 1 each) to `pages`
  /// and returns how many it got.
  ///
  /// High orders first: `min(MAX_PAGE_ORDER, ilog2(pages left))`, with the caller's flags
  /// plus `.noWarn`, minus `.noFail` and `.directReclaim`; each block is split at once
  /// (`split_page()`) and its pages appended in order; a failure lowers the highest order
  /// tried from then on. The rest comes from the bulk allocator in calls of at most 100
  /// pages, then from single order-0 allocations (which may still find a page the bulk
  /// call did not). So the array is mostly long ascending runs of power-of-two blocks.
  @discardableResult
  public func allocVmallocPages(_ n: Int, gfp: GFP, into pages: inout [PFN]) -> Int {
    let pageGFP = gfp.union(.noWarn).subtracting(.comp)
    let largeGFP = pageGFP.subtracting([.noFail, .directReclaim])
    var allocated = 0
    var maxAttempt = PageGeometry.maxOrder
    var order = min(maxAttempt, PageGeometry.floorLog2(n))
    while order > 0 && allocated < n {
      guard let head = allocPages(order: order, gfp: largeGFP) else {
        maxAttempt = order &- 1
        order = maxAttempt
        continue
      }
      splitPage(head, order: order)
      for i in 0..<(1 &<< order) { pages.append(head + i) }
      allocated &+= 1 &<< order
      if allocated < n { order = min(maxAttempt, PageGeometry.floorLog2(n &- allocated)) }
    }
    while allocated < n {
      let want = min(100, n &- allocated)
      let got = allocPagesBulk(count: want, gfp: pageGFP, into: &pages)
      allocated &+= got
      if got != want { break }
    }
    while allocated < n {
      guard let p = allocPages(order: 0, gfp: pageGFP) else { break }
      pages.append(p)
      allocated &+= 1
    }
    return allocated
  }
}

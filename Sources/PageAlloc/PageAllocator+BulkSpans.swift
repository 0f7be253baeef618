// The bulk calls of the PFN API over spans and owned arrays, beside the array forms of
// PageAllocator+Alloc.swift and PageAllocator+Free.swift.

extension PageAllocator {
  /// `alloc_pages_bulk()` into caller-provided storage: appends up to `count` order-0 pages
  /// (one reference each) to `pages`, stopping early when memory runs out or `pages` is
  /// full. Returns how many were appended.
  ///
  /// ```swift
  /// let pfns = [PFN](capacity: 64) { allocator.allocPagesBulk(count: 64, gfp: .kernel, into: &$0) }
  /// ```
  @discardableResult
  public func allocPagesBulk(count: Int, gfp: GFP, into pages: inout OutputSpan<PFN>) -> Int {
    let flags = gfp.union(.noWarn)
    var n = 0
    while n < count && !pages.isFull {
      guard let p = allocInternal(0, flags, frozen: false) else { break }
      pages.append(PFN(p))
      n &+= 1
    }
    return n
  }

  /// `alloc_pages_bulk()` returning the pages: up to `count` order-0 pages, one reference
  /// each (fewer when memory runs out), in allocation order.
  public func allocPagesBulk(count: Int, gfp: GFP) -> [PFN] {
    guard count > 0 else { return [] }
    return [PFN](capacity: count) { allocPagesBulk(count: count, gfp: gfp, into: &$0) }
  }

  /// `free_pages_bulk()` over a span: the same as ``freePagesBulk(_:)-([PFN])``, without
  /// an array.
  ///
  /// ```swift
  /// allocator.freePagesBulk(pfns.span)
  /// ```
  public func freePagesBulk(_ pfns: Span<PFN>) {
    pfns.withUnsafeBufferPointer { freePagesBulk($0) }
  }
}

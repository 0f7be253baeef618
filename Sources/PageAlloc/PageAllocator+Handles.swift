// The owned-page API: allocations that return move-only handles (PageBlock, PageRun) which
// free what they own exactly once. It sits on the PFN API, which stays the kernel-model
// layer: every handle operation is one PFN call (PageBlock.swift, PageRun.swift).

extension PageAllocator {
  /// Allocates a block of `2^order` pages (`alloc_pages()`) and returns the handle that
  /// owns it; dropping the handle frees the block.
  ///
  /// The same allocation as ``allocPages(order:gfp:)``: per-CPU lists for orders 0-3 and
  /// 9, the zonelist walk against the low then the min watermark, no reclaim and no
  /// compaction. With `.comp` at an order above 0 the block is a compound page, which
  /// ``PageBlock/free()`` frees whole and ``PageBlock/split()`` refuses (it traps).
  ///
  /// ```swift
  /// let page = try allocator.allocate()                // one order-0 page
  /// let huge = try allocator.allocate(order: 9)        // 2 MiB
  /// ```
  ///
  /// - Throws: ``AllocationFailure`` with the order, the flags and the reason (invalid
  ///   order, injected failure, every zone below its watermark, no free block of the
  ///   order). Like the PFN API, a failure is also counted and reported (warn_alloc,
  ///   unless `.noWarn`).
  /// - Complexity: as ``allocPages(order:gfp:)``; nothing more on success.
  @inlinable
  public func allocate(order: Int = 0, gfp: GFP = .kernel) throws(AllocationFailure) -> PageBlock {
    guard let p = allocInternal(order, gfp, frozen: false) else { throw allocationFailure(order, gfp) }
    return PageBlock(_owning: PFN(p), order: order, compound: order > 0 && gfp.contains(.comp), allocator: self)
  }

  /// Allocates `pages` contiguous order-0 pages with one reference each
  /// (`alloc_contig_pages()`, ``allocContigPages(count:gfp:)``) and returns the run that
  /// owns them; dropping the run frees them with the chunked free.
  ///
  /// The zones `gfp` allows are searched, highest first, at pfns that are multiples of
  /// `pages`. PageAlloc has no migration: a candidate with a page in use is skipped.
  ///
  /// - Throws: ``ContigRangeError``: ``ContigRangeError/invalidCount(_:)`` for a count
  ///   outside 1...2^32; ``ContigRangeError/invalidGFP(_:)`` for flags
  ///   `alloc_contig_range()` refuses, and for `.comp` (a run holds order-0 pages: use
  ///   ``allocContigPages(count:gfp:)`` for a compound page);
  ///   ``ContigRangeError/noFreeRange(pages:gfp:)`` when no candidate range is free.
  public func allocateContiguous(pages: Int, gfp: GFP = .kernel) throws(ContigRangeError) -> PageRun {
    guard pages > 0, pages <= 1 << 32 else { throw .invalidCount(pages) }
    guard !gfp.contains(.comp) else { throw .invalidGFP(.comp) }
    guard gfp.isSubset(of: PageAllocator.contigAllowedGFP) else {
      throw .invalidGFP(gfp.subtracting(PageAllocator.contigAllowedGFP))
    }
    guard let p = allocContigPages(count: pages, gfp: gfp) else { throw .noFreeRange(pages: pages, gfp: gfp) }
    return PageRun(_owning: p, count: pages, allocator: self)
  }
}

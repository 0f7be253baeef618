import Synchronization

// Entry points the benchmarks need and the public API does not offer: the allocation and
// free paths with the per-CPU lists bypassed, the bare per-page work of a free (the
// "floor"), and frozen order-0 pages from a frozen block. `@_spi(Benchmark)` so the
// separate Benchmarks package can reach them; not for programs.

extension PageAllocator {
  /// `alloc_pages()` that never uses the per-CPU lists: every request takes the zone lock
  /// and `rmqueue()`s from the buddy, as the kernel did for every order before the pcp
  /// lists existed (and still does when the pcp trylock fails). The same watermarks and page
  /// preparation as ``allocPages(order:gfp:)``, and its first pass with ALLOC_NOFRAGMENT;
  /// a simpler walk after it (the min pass straight away, no drain, no memalloc pass); no
  /// fault injection.
  @_spi(Benchmark) @inlinable
  public func allocPagesBypassingPcp(order: Int, gfp: GFP) -> PFN? {
    precondition(order >= 0 && order <= PageGeometry.maxOrder)
    let mt = gfp.migrateType.rawValue
    let highest = gfp.highestZone.rawValue
    let preferred = zonelist(for: highest).preferred
    let fast = preferred >= 0 ? noFragmentFlags(zones + preferred) : []
    var pass = 0
    while pass < 2 {
      for zi in zonelist(for: highest) {
        let z = zones + zi
        let mark = pass == 0 ? z.pointee.wmarkLow : reserveMark(z.pointee.wmarkMin, gfp)
        let highMark = pass == 0 ? z.pointee.wmarkHigh : reserveMark(z.pointee.wmarkHigh, gfp)
        let flags = pass == 0 ? fast : []
        if zoneAllocOK(z, order, mark, highMark, highest), let pfn = rmqueueBuddy(z, order, mt, flags) {
          if _slowPath(checksPages) && !checkNewPages(pfn, order, zi) { continue }
          prepNewPage(pfn, order, gfp, frozen: false)
          tracePageAlloc(pfn, order, mt, gfp)
          return PFN(pfn)
        }
      }
      pass &+= 1
    }
    reportAllocFailure(order, gfp)
    return nil
  }

  /// `__free_pages(page, 0)` that never uses the per-CPU lists: a clean order-0 page whose
  /// last reference this drops goes straight to the buddy under the zone lock
  /// (`free_one_page()`). Any other case (order > 0, a page still referenced, a bad page)
  /// takes the ordinary ``freePages(_:order:)`` path, with its checks and reports.
  @_spi(Benchmark) @inlinable
  public func freePagesBypassingPcp(_ pfn: PFN, order: Int) {
    let p = pfn.value
    guard order == 0, let r = memMap.record(p), let zi = zoneIndex(p) else {
      freePages(pfn, order: order)
      return
    }
    let w = r.pointee.flags.load(ordering: .relaxed)
    if _slowPath(w != 0 || r.pointee.refcount.load(ordering: .relaxed) != 1) {
      freePages(pfn, order: order)
      return
    }
    // The refcount is 1 and we hold it: drop it; another holder may have raced a get.
    let old = r.pointee.refcount.wrappingSubtract(1, ordering: .acquiringAndReleasing).oldValue
    if _slowPath(old != 1) {
      if old <= 0 { refcountUnderflow(p, r, "freePagesBypassingPcp") }
      return
    }
    tracePageFree(p, 0)
    if _slowPath(debugging) { debugFreeHook(p, 1) }
    zoneFreeBlock(zones + zi, p, 0)
  }

  /// The floor of a free of `count` order-0 pages from `pfn`: the per-page work that any
  /// free of them must do and nothing else. Each record's reference is dropped (the same
  /// atomic as `put_page()`) and `free_pages_prepare()`'s fast check made (the page's
  /// flag word must be clear and the count must reach zero), with no run bookkeeping, no
  /// chunking and no list operation. Returns how many pages passed: `count` when every
  /// page was a clean order-0 page with one reference.
  ///
  /// The pages are left allocated and frozen (refcount 0): give them back with
  /// ``freeContigFrozenRange(_:count:)``. The range must not cross a section.
  @_spi(Benchmark) @inline(never)
  public func freeFloorDrop(_ pfn: PFN, count: Int) -> Int {
    precondition(memMap.record(pfn.value) != nil && memMap.sectionEnd(pfn.value) >= pfn.value &+ count)
    var r = memMap.presentRecord(pfn.value)
    let end = r + count
    var ok = 0
    let slow = tracing.load(ordering: .relaxed)
    while r < end {
      let old = r.pointee.refcount.wrappingSubtract(1, ordering: .acquiringAndReleasing).oldValue
      let w = r.pointee.flags.load(ordering: .relaxed)
      ok &+= (old == 1 && w == 0 && !slow) ? 1 : 0
      r += 1
    }
    return ok
  }

  /// `split_page()` for a frozen non-compound block (what `alloc_contig_frozen_range()`
  /// hands out): `2^order` frozen order-0 pages. Returns false, and changes nothing, when
  /// `pfn` is not the head of an allocated frozen non-compound block of that order.
  @_spi(Benchmark)
  public func splitFrozenBlock(_ pfn: PFN, order: Int) -> Bool {
    guard let r = memMap.record(pfn.value), zoneIndex(pfn.value) != nil else { return false }
    let w = r.pointee.flags.load(ordering: .relaxed)
    guard w & PG.flagMask & ~PG.tailsTouched == 0, PG.order(w) == order,
      r.pointee.refcount.load(ordering: .relaxed) == 0,
      freeBlockContaining(pfn.value) == nil
    else { return false }
    r.pointee.flags.store(0, ordering: .relaxed)
    if _slowPath(debugging) { debugSplitHook(pfn.value, order) }
    return true
  }

  /// The `mm_page_free` trace point alone, for measuring what a trace point costs when no
  /// sink is installed (one relaxed load and a predicted branch).
  @_spi(Benchmark) @inlinable
  public func tracePageFreePoint(_ pfn: PFN) { tracePageFree(pfn.value, 0) }
}

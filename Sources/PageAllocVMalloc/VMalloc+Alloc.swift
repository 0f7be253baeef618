import PageAlloc
import _PageAllocUtilities
import Glibc

extension VMalloc {
  // MARK: - vmalloc

  /// `__vmalloc_node()`: a virtually contiguous buffer of `size` bytes (rounded up to
  /// pages) built from the allocator's pages, or nil.
  ///
  /// With `.movable` in `gfp` (`.highUserMovable`) the area is movable: compaction and
  /// contiguous-range allocation may migrate its pages, copying their bytes and remapping
  /// the window page onto the new page, so the area's address never changes. Such an area
  /// must be read and written only inside ``withPinnedArea(_:_:)``, which keeps its pages
  /// where they are for the scope; a write through the address outside a scope may be lost
  /// by a concurrent migration.
  ///
  /// Steps, as the kernel's `__vmalloc_node_range()`: reserve a window slot (`size` + one
  /// guard page, the start aligned to `align`), allocate the pages with
  /// ``allocAreaPages(_:gfp:into:)`` (`vm_area_alloc_pages()`), charge the map-count budget,
  /// and map each physically contiguous run with one `mmap` of the memfd. Returns nil, with
  /// every page and the slot given back, when the window, the pages or the map budget run
  /// out part way; `.noWarn` silences the report.
  ///
  /// - Parameters:
  ///   - size: bytes, at least 1.
  ///   - gfp: page flags; `.zero` zeroes the memory (`vzalloc`), `.comp` is ignored.
  ///   - align: start alignment, a power of two up to the pageblock size (2 MiB); smaller
  ///     than a page means a page.
  ///   - file: the caller's file, shown by ``vmallocInfo()``.
  ///   - line: the caller's line, shown by ``vmallocInfo()``.
  /// - Complexity: O(pages) plus one `mmap` per contiguous run.
  public func vmalloc(
    _ size: Int, gfp: GFP = .kernel, align: Int = PageGeometry.pageSize, file: StaticString = #fileID,
    line: UInt = #line
  ) -> UnsafeMutableRawPointer? {
    guard size > 0, size <= windowPages &* PageGeometry.pageSize else {
      return fail(gfp, "vmalloc error: size \(size), invalid size")
    }
    guard align > 0, align & (align &- 1) == 0, align <= AddressWindow.maxAlignment else {
      return fail(
        gfp, "vmalloc error: size \(size), alignment \(align) is not a power of two up to \(AddressWindow.maxAlignment)"
      )
    }
    let n = (size &+ PageGeometry.pageSize &- 1) / PageGeometry.pageSize
    let alignPages = max(align / PageGeometry.pageSize, 1)
    guard let slot = reserveSlot(pages: n, alignPages: alignPages) else {
      return fail(gfp, "vmap allocation for size \(n * PageGeometry.pageSize) failed: vmalloc window exhausted")
    }
    var pages: [PFN] = []
    pages.reserveCapacity(n)
    let got = allocAreaPages(n, gfp: gfp, into: &pages)
    if got < n {
      allocator.freePagesBulk(pages)
      releaseSlot(slot)
      return fail(
        gfp,
        "vmalloc error: size \(n * PageGeometry.pageSize), failed to allocate pages, mode:0x\(String(gfp.rawValue, radix: 16))(\(gfp)), nodemask=(null)"
      )
    }
    let charge = VMalloc.runCount(pages) &+ 1
    guard self.charge(charge) else {
      allocator.freePagesBulk(pages)
      releaseSlot(slot)
      return fail(
        gfp, "vmalloc error: size \(n * PageGeometry.pageSize), map-count budget spent (\(charge) mappings needed)")
    }
    guard mapPages(pages, at: slot.lowerBound) else {
      uncharge(charge)
      allocator.freePagesBulk(pages)
      releaseSlot(slot)
      failures.wrappingAdd(1, ordering: .relaxed)
      return nil
    }
    var area = Area(
      start: slot.lowerBound, pageCount: n, slot: slot, pages: pages, charged: charge, kind: .vmalloc, file: file,
      line: line)
    area.movable = gfp.contains(.movable)
    state.withLock { s in
      s.areas[slot.lowerBound] = area
      if area.movable {
        for (i, p) in pages.enumerated() { s.movablePages[p.value] = (slot.lowerBound, i) }
      }
    }
    if area.movable { registerMovable(pages) }
    nrVmallocPages.wrappingAdd(n, ordering: .relaxed)
    return windowBase + slot.lowerBound &* PageGeometry.pageSize
  }

  /// `vzalloc()`: ``vmalloc(_:gfp:align:file:line:)`` with `.zero`.
  public func vzalloc(_ size: Int, file: StaticString = #fileID, line: UInt = #line) -> UnsafeMutableRawPointer? {
    vmalloc(size, gfp: [.kernel, .zero], file: file, line: line)
  }

  @inline(never)
  func fail(_ gfp: GFP, _ message: @autoclosure () -> String) -> UnsafeMutableRawPointer? {
    failures.wrappingAdd(1, ordering: .relaxed)
    if !gfp.contains(.noWarn) { warn(message()) }
    return nil
  }

  /// `vm_area_alloc_pages()`: see ``PageAlloc/PageAllocator/allocVmallocPages(_:gfp:into:)``.
  @discardableResult
  public func allocAreaPages(_ n: Int, gfp: GFP, into pages: inout [PFN]) -> Int {
    allocator.allocVmallocPages(n, gfp: gfp, into: &pages)
  }

  // MARK: - vfree

  /// `vfree()`: unmaps the area at `address` (back to `PROT_NONE`), then frees its pages
  /// with `freePath` (default: the configuration's, normally ``FreePath/bulk``). The slot
  /// goes back to the window. `nil` is ignored (returns true); an address that is no
  /// area's start is reported and ignored (returns false). A vmap area is only unmapped.
  @discardableResult
  public func vfree(_ address: UnsafeMutableRawPointer?, freePath: FreePath? = nil) -> Bool {
    guard let address else { return true }
    guard let area = removeArea(address, "vfree") else { return false }
    unmapArea(area)
    if area.kind == .vmalloc {
      nrVmallocPages.wrappingSubtract(area.pageCount, ordering: .relaxed)
      switch freePath ?? configuration.freePath {
      case .bulk:
        allocator.freePagesBulk(area.pages)
      case .perPage:
        for p in area.pages { allocator.freePages(p, order: 0) }
      }
    }
    releaseSlot(area.slot)
    return true
  }

  func removeArea(_ address: UnsafeMutableRawPointer, _ op: String) -> Area? {
    let addr = UInt(bitPattern: address)
    let a = state.withLock { s -> Area? in
      guard let off = s.window.exactPageOffset(addr), let a = s.areas.removeValue(forKey: off) else { return nil }
      if a.movable {
        // From here on a migration of its pages finds no area and fails; the free below
        // leaves an isolated page to the migration's reference.
        for p in a.pages { s.movablePages.removeValue(forKey: p.value) }
      }
      return a
    }
    if a == nil {
      badCalls.wrappingAdd(1, ordering: .relaxed)
      warn("Trying to \(op)() nonexistent vm area (\(address))")
    }
    return a
  }

  func unmapArea(_ area: Area) {
    let at = windowBase + area.start &* PageGeometry.pageSize
    guard AddressWindow.unmapToReserved(at, pages: area.pageCount) else {
      // Freeing the pages now would leave them reachable through the old mapping.
      fatalError("vfree: cannot put PROT_NONE back over \(at): \(String(cString: strerror(errno)))")
    }
    uncharge(area.charged)
  }

  // MARK: - vmap

  /// `vmap()`: maps caller-owned pages (in this order) at a new virtually contiguous
  /// address, or nil. The pages are not taken: ``vunmap(_:)`` only unmaps them, and the
  /// caller frees them afterwards. Every pfn must be a present page of a zone.
  public func vmap(_ pages: [PFN], file: StaticString = #fileID, line: UInt = #line) -> UnsafeMutableRawPointer? {
    guard !pages.isEmpty else { return fail([], "vmap: no pages") }
    for p in pages where !(allocator.isPresent(p) && allocator.zoneKind(of: p) != nil) {
      return fail([], "vmap: pfn \(p) is not a page of the allocator")
    }
    let n = pages.count
    guard let slot = reserveSlot(pages: n, alignPages: 1) else {
      return fail([], "vmap allocation for size \(n * PageGeometry.pageSize) failed: vmalloc window exhausted")
    }
    let charge = VMalloc.runCount(pages) &+ 1
    guard self.charge(charge) else {
      releaseSlot(slot)
      return fail([], "vmap: map-count budget spent (\(charge) mappings needed)")
    }
    guard mapPages(pages, at: slot.lowerBound) else {
      uncharge(charge)
      releaseSlot(slot)
      failures.wrappingAdd(1, ordering: .relaxed)
      return nil
    }
    let area = Area(
      start: slot.lowerBound, pageCount: n, slot: slot, pages: pages, charged: charge, kind: .vmap, file: file,
      line: line)
    state.withLock { $0.areas[slot.lowerBound] = area }
    return windowBase + slot.lowerBound &* PageGeometry.pageSize
  }

  /// `vunmap()`: removes a vmap area's mapping; the pages stay the caller's. A vmalloc
  /// area is refused (reported, returns false): it must be vfree'd, or its pages would leak.
  @discardableResult
  public func vunmap(_ address: UnsafeMutableRawPointer?) -> Bool {
    guard let address else { return true }
    let addr = UInt(bitPattern: address)
    let a = state.withLock { s -> Area? in
      guard let off = s.window.exactPageOffset(addr), let a = s.areas[off], a.kind == .vmap else { return nil }
      return s.areas.removeValue(forKey: off)
    }
    guard let area = a else {
      badCalls.wrappingAdd(1, ordering: .relaxed)
      warn("Trying to vunmap() nonexistent vmap area (\(address))")
      return false
    }
    unmapArea(area)
    releaseSlot(area.slot)
    return true
  }
}

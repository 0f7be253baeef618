// Claiming exact pages: taking given free pages out of the allocator without going through
// the allocation policy, to reproduce "the kernel handed out these pages" from a trace.

/// The outcome of ``PageAllocator/claimFreeRange(_:count:account:)``.
package enum ClaimResult: Equatable {
  case claimed
  /// Some page is not free (in use, quarantined, reserved, or in a hole).
  case busy
  /// The range is not inside one zone.
  case outOfRange
}

extension PageAllocator {
  /// Takes exactly the pages `[pfn, pfn + count)` off the free lists, from wherever they
  /// are free: a pcp list of any CPU, or inside a larger buddy block, which is split as
  /// needed. Models the kernel's `take_page_off_buddy()` + `break_down_buddy_pages()`,
  /// generalised to a range and to pcp lists (the kernel has no such operation for pcp
  /// pages: replaying a trace needs it).
  ///
  /// All or nothing: when one page is not free, nothing changes and the result is
  /// ``ClaimResult/busy``. On success every claimed page is an independent order-0 page
  /// with refcount 1 (the state `split_page()` leaves), so the pages can be freed one by
  /// one with `freePages(_:order: 0)`, or together with `freeContigRange`, which frees an
  /// aligned power-of-two range as one block. The parts of a split block outside the range
  /// go back to the buddy lists of their pageblock's type (for a block taken from a pcp
  /// list too); they cannot merge, since their buddies hold claimed pages. The claimed
  /// pages are counted in PGALLOC unless `account` is false (pages allocated before a
  /// trace began).
  ///
  /// Locks: when every page lies in buddy blocks, only the zone lock (buddy blocks change
  /// only under it); when a pcp block is involved, every pcp lock of the zone (in CPU
  /// order, since the block's CPU is not known), then the zone lock.
  /// - Complexity: O(count + MAX_PAGE_ORDER) for buddy blocks; a block on a pcp list also
  ///   costs a walk to the nearer end of its list, and cpuCount pcp locks.
  package func claimFreeRange(_ pfn: Int, count: Int, account: Bool = true) -> ClaimResult {
    precondition(count > 0)
    let end = pfn &+ count
    guard let zi = zoneIndex(pfn), end <= zones[zi].end else { return .outOfRange }
    let z = zones + zi
    // Fast path: buddy blocks only, under the zone lock alone.
    z.pointee.lock.lock()
    switch coveringBlocks(pfn, end) {
    case .busy:
      z.pointee.lock.unlock()
      return .busy
    case .buddyOnly:
      claimLocked(z, zi, pfn, end, account)
      z.pointee.lock.unlock()
      claimed(pfn, count)
      return .claimed
    case .someOnPcp:
      z.pointee.lock.unlock()
    }
    for cpu in 0..<cpuCount { pcp(cpu * zoneCount + zi).pointee.lock.lock() }
    z.pointee.lock.lock()
    let busy = coveringBlocks(pfn, end) == .busy
    if !busy { claimLocked(z, zi, pfn, end, account) }
    z.pointee.lock.unlock()
    for cpu in 0..<cpuCount { pcp(cpu * zoneCount + zi).pointee.lock.unlock() }
    if busy { return .busy }
    claimed(pfn, count)
    return .claimed
  }

  /// The claimed pages are allocations now: `post_alloc_hook()`'s debug steps, outside the
  /// locks (the pages are the caller's).
  private func claimed(_ pfn: Int, _ count: Int) {
    if debugging { debugAllocRangeHook(pfn, count, recordOrder: 0, []) }
  }

  private enum Coverage { case busy, buddyOnly, someOnPcp }

  /// Whether every page of `[pfn, end)` is inside a free block, and where those are.
  /// Exact for buddy blocks under the zone lock; pcp blocks need their pcp lock too.
  private func coveringBlocks(_ pfn: Int, _ end: Int) -> Coverage {
    var p = pfn
    var pcpSeen = false
    while p < end {
      guard memMap.record(p) != nil, let b = freeBlockContaining(p) else { return .busy }
      if b.onPcp { pcpSeen = true }
      p = b.head &+ (1 &<< b.order)
    }
    return pcpSeen ? .someOnPcp : .buddyOnly
  }

  /// The claim itself, with the locks `claimFreeRange` took and the coverage checked.
  private func claimLocked(_ z: UnsafeMutablePointer<Zone>, _ zi: Int, _ pfn: Int, _ end: Int, _ account: Bool) {
    let count = end &- pfn
    // Take each covering block off its list and give back what lies outside.
    var p = pfn
    while p < end {
      let b = freeBlockContaining(p).unsafelyUnwrapped
      if b.onPcp {
        unlinkPcpBlock(zi, b.head, b.order)
      } else {
        delFromFreeList(z, b.head, b.order, memMap.freeListTypeRaw(b.head))
      }
      let blockEnd = b.head &+ (1 &<< b.order)
      if b.head < pfn { giveBack(z, b.head, pfn) }
      if blockEnd > end { giveBack(z, end, blockEnd) }
      p = blockEnd
    }
    // The split_page() state.
    var q = pfn
    while q < end {
      let r = memMap.presentRecord(q)
      r.pointee.flags.store(0, ordering: .relaxed)
      r.pointee.refcount.store(1, ordering: .relaxed)
      q &+= 1
    }
    if account { z.pointee.pgalloc = z.pointee.pgalloc &+ count }
  }

  /// Returns the free pages `[start, end)` (the rest of a split block) to the buddy lists
  /// as the largest aligned blocks, each on its pageblock type's list.
  @inline(__always)
  private func giveBack(_ z: UnsafeMutablePointer<Zone>, _ start: Int, _ end: Int) {
    var p = start
    while p < end {
      let o = PageAllocator.chunkOrder(p, end &- p)
      addToFreeList(z, p, o, memMap.freeListTypeRaw(p), tail: false)
      p &+= 1 &<< o
    }
  }

  /// Unlinks a block from whichever pcp list of zone `zi` holds it (pcp locks held; the
  /// list found by ``findPcpList(_:_:_:)``).
  private func unlinkPcpBlock(_ zi: Int, _ pfn: Int, _ order: Int) {
    guard let (cpu, li) = findPcpList(zi, pfn, order) else {
      preconditionFailure("pcp block \(PFN(pfn)) order \(order) is on no pcp list of its zone")
    }
    let pc = pcp(cpu &* zoneCount &+ zi)
    let r = memMap.presentRecord(pfn)
    unlink(pc.pointee.lists + li, r)
    r.pointee.flags.store(0, ordering: .relaxed)
    pc.pointee.count = pc.pointee.count &- (1 &<< order)
  }
}

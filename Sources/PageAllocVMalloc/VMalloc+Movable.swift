import PageAlloc
import _PageAllocUtilities
import Glibc

// Movable vmalloc areas: an area allocated with `.movable` registers its pages with the
// allocator as movable (PageAlloc's `MovablePageOwner`). When compaction or a contiguous
// allocation migrates one, the allocator copies the page's bytes to a new page and asks
// VMalloc to follow: the window page is remapped onto the new page's memfd offset (`mmap`
// with MAP_FIXED | MAP_SHARED), so the area's address never changes. The kernel does not
// migrate vmalloc pages; this is the user-space analogue of an anonymous mapping whose page
// moves under an unchanged virtual address.
//
// The scoped accessor `withPinnedArea` pins the area for its duration, as FOLL_PIN does: a
// pinned area's pages are not isolated, and a scope that starts while a page is isolated
// waits until its migration or putback ends. So no write through the area can fall
// between the copy and the remap and be lost.
//
// Locks: the owner callbacks run with no allocator lock held and take VMalloc's lock;
// VMalloc calls into the allocator (registration, frees) only outside its lock. The two
// never nest the other way, so they cannot deadlock.

/// The owner VMalloc registers its movable pages with. It holds the VMalloc weakly: the
/// allocator's owner table keeps the proxy alive, not the VMalloc, which the allocator
/// must not keep alive (it holds the allocator).
final class VMallocMovableOwner: MovablePageOwner, @unchecked Sendable {
  /// Set once, at the end of the VMalloc's init.
  weak var vmalloc: VMalloc?

  func isolatePage(_ pfn: PFN, order: Int, mode: MigrationMode) -> Bool {
    vmalloc?.isolateMovable(pfn) ?? false
  }

  func migratePage(from source: PFN, to destination: PFN, order: Int, mode: MigrationMode) -> MigrationResult {
    vmalloc?.migrateMovable(from: source, to: destination) ?? .failure
  }

  func putBackPage(_ pfn: PFN, order: Int) {
    vmalloc?.putBackMovable(pfn)
  }
}

extension VMalloc {
  /// Calls `body` with the area at `address` (its bytes, the area's whole mapped length,
  /// and its pages in mapping order) while the area is pinned: none of its pages migrates
  /// until `body` returns. When one of its pages is being migrated as the call starts, the
  /// call waits for that migration to end. Returns nil when `address` is no live area's
  /// start.
  ///
  /// The pointer and the pfns are valid only inside `body`. For a movable area (allocated
  /// with `.movable`) this is the way to reach its bytes; for any other area it costs a
  /// lock round trip and changes nothing.
  public func withPinnedArea<R>(
    _ address: UnsafeRawPointer, _ body: (UnsafeMutableRawBufferPointer, [PFN]) throws -> R
  ) rethrows -> R? {
    let addr = UInt(bitPattern: address)
    var waiting = false
    var pinned: (start: Int, pages: [PFN])?
    while true {
      let (found, busy) = state.withLock { s -> ((start: Int, pages: [PFN])?, Bool) in
        guard let off = s.window.exactPageOffset(addr), var a = s.areas[off], a.kind == .vmalloc else {
          return (nil, false)
        }
        if a.isolated > 0 {
          if !waiting { a.pinWaiters += 1 }
          s.areas[off] = a
          return ((off, []), true)
        }
        if waiting { a.pinWaiters -= 1 }
        a.pins += 1
        s.areas[off] = a
        return ((off, a.pages), false)
      }
      // No such area (or it went away while this call waited for it).
      guard let found else { return nil }
      if !busy {
        pinned = found
        break
      }
      waiting = true
      sched_yield()
    }
    let (start, pages) = pinned!
    defer {
      state.withLock { s in
        if var a = s.areas[start] {
          a.pins -= 1
          s.areas[start] = a
        }
      }
    }
    let bytes = UnsafeMutableRawBufferPointer(
      start: windowBase + start &* PageGeometry.pageSize, count: pages.count &* PageGeometry.pageSize)
    return try body(bytes, pages)
  }

  /// Page migrations of movable areas VMalloc followed so far.
  public var migrationCount: Int { state.withLock { $0.migrations } }

  /// Isolations of movable areas' pages refused because the area was pinned.
  public var pinRefusalCount: Int { state.withLock { $0.pinRefusals } }

  /// Registers the pages of a new movable area (outside VMalloc's lock).
  func registerMovable(_ pages: [PFN]) {
    for p in pages {
      let ok = allocator.setMovable(p, order: 0, owner: movableOwner)
      assert(ok, "a page just allocated for a movable area must register")
    }
  }

  /// `isolate_page()`: refused while the area is pinned or a pin waits.
  func isolateMovable(_ pfn: PFN) -> Bool {
    state.withLock { s in
      guard let (start, _) = s.movablePages[pfn.value], var a = s.areas[start] else { return false }
      if a.pins > 0 || a.pinWaiters > 0 {
        s.pinRefusals += 1
        return false
      }
      a.isolated += 1
      s.areas[start] = a
      return true
    }
  }

  func putBackMovable(_ pfn: PFN) {
    state.withLock { s in
      guard let (start, _) = s.movablePages[pfn.value], var a = s.areas[start] else { return }
      a.isolated -= 1
      s.areas[start] = a
    }
  }

  /// `migrate_page()`: the allocator has copied the page to `destination`; remap the
  /// window page there. The whole new physically contiguous run around the page is
  /// mapped again with one `mmap`, so the area stays one mapping per run and its charge
  /// against the map-count budget (runs + 1) stays exact; a migration that would need more
  /// mappings than the budget has left fails, and the page stays where it was.
  func migrateMovable(from source: PFN, to destination: PFN) -> MigrationResult {
    state.withLock { s in
      guard let (start, index) = s.movablePages[source.value], var a = s.areas[start], a.pages[index] == source
      else { return .failure }
      var pages = a.pages
      pages[index] = destination
      let charge = VMalloc.runCount(pages) &+ 1
      let delta = charge &- a.charged
      if delta > 0 {
        guard s.charged &+ delta <= mapLimit, MapCountBudget.charge(delta) else { return .failure }
        s.charged &+= delta
      }
      var lo = index
      while lo > 0 && pages[lo &- 1].value == pages[lo].value &- 1 { lo &-= 1 }
      var hi = index &+ 1
      while hi < pages.count && pages[hi].value == pages[hi &- 1].value &+ 1 { hi &+= 1 }
      let at = windowBase + (start &+ lo) &* PageGeometry.pageSize
      // debug_pagealloc's fault handler names the page last mapped at a window page.
      lastMapped?[start &+ index] = UInt32(truncatingIfNeeded: destination.value &+ 1)
      guard
        AddressWindow.mapRun(
          at, count: hi &- lo, fd: fd, fileOffset: allocator.memfdOffset(of: pages[lo]),
          populate: configuration.prefault)
      else {
        // MAP_FIXED may have dropped the old mapping already: the area cannot stay
        // consistent, and its pages must not be reachable twice.
        fatalError("vmalloc: cannot remap a migrated page at \(at): \(String(cString: strerror(errno)))")
      }
      if delta < 0 {
        s.charged &+= delta
        MapCountBudget.uncharge(-delta)
      }
      a.pages = pages
      a.charged = charge
      a.isolated -= 1
      s.areas[start] = a
      s.movablePages.removeValue(forKey: source.value)
      s.movablePages[destination.value] = (start, index)
      s.migrations += 1
      return .success
    }
  }
}

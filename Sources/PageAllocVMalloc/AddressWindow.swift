import PageAlloc
import _PageAllocUtilities
import Glibc

/// The reserved virtual range vmalloc areas are carved from: the user-space stand-in for
/// the kernel's VMALLOC_START..VMALLOC_END, with its free space kept as a sorted list of
/// free extents (the kernel keeps `free_vmap_area_root`, an augmented rb-tree).
///
/// The whole range is one `PROT_NONE`, `MAP_NORESERVE` anonymous mapping: it costs no memory
/// and one entry in `/proc/self/maps`. An area's slot is `pages + guard` pages; the guard
/// page stays `PROT_NONE`, so running off the end of an area faults, as in the kernel.
/// A freed slot goes back on the free list (merged with its free neighbours) and is reused:
/// allocation is first fit at the lowest suitable address, as `alloc_vmap_area()` does.
///
/// Not thread-safe: ``VMalloc`` calls it under its lock.
package struct AddressWindow: @unchecked Sendable {
  /// Base of the reservation (aligned to ``maxAlignment``).
  let base: UnsafeMutableRawPointer
  /// Pages in the reservation.
  let pageCount: Int
  /// Free extents (page offsets from `base`), sorted, disjoint and never adjacent.
  var free: [Range<Int>]

  /// The largest alignment an area can ask for: the pageblock size (2 MiB).
  package static let maxAlignment = PageGeometry.pageblockPages * PageGeometry.pageSize

  /// The flags of the reservation and of every range given back to it: identical flags
  /// let the kernel merge a restored range with its `PROT_NONE` neighbours into one VMA.
  static let reserveFlags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE

  init(bytes: Int) throws(VMallocError) {
    let pageSize = PageGeometry.pageSize
    let pages = (bytes + pageSize - 1) / pageSize
    let len = pages * pageSize
    let extra = AddressWindow.maxAlignment
    guard let raw = mmap(nil, len + extra, PROT_NONE, AddressWindow.reserveFlags, -1, 0), raw != MAP_FAILED
    else { throw .reserveFailed(bytes: len, errno: errno) }
    // Trim the reservation to an aligned start, so an aligned page offset is an aligned
    // address.
    let addr = UInt(bitPattern: raw)
    let aligned = (addr + UInt(extra) - 1) & ~UInt(extra - 1)
    let head = Int(aligned - addr)
    if head > 0 { munmap(raw, head) }
    let tail = extra - head
    if tail > 0 { munmap(raw + head + len, tail) }
    base = raw + head
    pageCount = pages
    free = [0..<pages]
  }

  func release() { munmap(base, pageCount * PageGeometry.pageSize) }

  @inline(__always) func address(_ page: Int) -> UnsafeMutableRawPointer {
    base + page &* PageGeometry.pageSize
  }

  /// The page offset of `p` if it is the first byte of a window page.
  func exactPageOffset(_ p: UInt) -> Int? {
    guard let off = pageOffset(p), p == UInt(bitPattern: address(off)) else { return nil }
    return off
  }

  /// The page offset of `p`, if it lies in the window.
  func pageOffset(_ p: UInt) -> Int? {
    let d = p &- UInt(bitPattern: base)
    guard d < UInt(pageCount &* PageGeometry.pageSize) else { return nil }
    return Int(d) / PageGeometry.pageSize
  }

  /// Takes `pages` pages whose first page offset is a multiple of `alignPages`, first fit
  /// from the lowest address. Returns the first page offset.
  ///
  /// - Complexity: O(free extents).
  mutating func allocate(pages: Int, alignPages: Int) -> Int? {
    var i = 0
    let mask = alignPages &- 1
    while i < free.count {
      let e = free[i]
      let start = (e.lowerBound &+ mask) & ~mask
      if start &+ pages <= e.upperBound {
        let before = e.lowerBound..<start
        let after = (start &+ pages)..<e.upperBound
        switch (before.isEmpty, after.isEmpty) {
        case (true, true): free.remove(at: i)
        case (false, true): free[i] = before
        case (true, false): free[i] = after
        case (false, false):
          free[i] = before
          free.insert(after, at: i &+ 1)
        }
        return start
      }
      i &+= 1
    }
    return nil
  }

  /// Gives a slot back, merging it with adjacent free extents.
  ///
  /// - Complexity: O(log extents) to find the place, O(extents) to insert.
  mutating func release(_ r: Range<Int>) {
    // First extent starting after r.
    var lo = 0
    var hi = free.count
    while lo < hi {
      let mid = (lo &+ hi) / 2
      if free[mid].lowerBound < r.lowerBound { lo = mid &+ 1 } else { hi = mid }
    }
    let mergesLeft = lo > 0 && free[lo &- 1].upperBound == r.lowerBound
    let mergesRight = lo < free.count && free[lo].lowerBound == r.upperBound
    switch (mergesLeft, mergesRight) {
    case (true, true):
      free[lo &- 1] = free[lo &- 1].lowerBound..<free[lo].upperBound
      free.remove(at: lo)
    case (true, false): free[lo &- 1] = free[lo &- 1].lowerBound..<r.upperBound
    case (false, true): free[lo] = r.lowerBound..<free[lo].upperBound
    case (false, false): free.insert(r, at: lo)
    }
  }

  /// Maps `count` pages of the memfd at `fileOffset` over window page `page`, shared and
  /// read-write (`MAP_FIXED` replaces the `PROT_NONE` reservation there).
  static func mapRun(
    _ at: UnsafeMutableRawPointer, count: Int, fd: Int32, fileOffset: Int, populate: Bool
  ) -> Bool {
    let flags = MAP_SHARED | MAP_FIXED | (populate ? MAP_POPULATE : 0)
    let p = mmap(at, count &* PageGeometry.pageSize, PROT_READ | PROT_WRITE, flags, fd, off_t(fileOffset))
    return p == at
  }

  /// Puts `PROT_NONE` reserved memory back over `pages` pages at `at`: the aliases of the
  /// memfd pages are gone after this returns (and the TLB entries with them).
  static func unmapToReserved(_ at: UnsafeMutableRawPointer, pages: Int) -> Bool {
    let p = mmap(at, pages &* PageGeometry.pageSize, PROT_NONE, reserveFlags | MAP_FIXED, -1, 0)
    return p == at
  }
}

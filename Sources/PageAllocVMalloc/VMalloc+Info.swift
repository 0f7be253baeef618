import PageAlloc
import _PageAllocUtilities
extension VMalloc {
  /// One live area, as ``VMalloc/areas()`` reports it.
  public struct AreaInfo: Sendable, Hashable {
    /// First byte of the area.
    public var address: UInt
    /// Bytes of the area's slot including the guard page (the kernel's `vm->size`).
    public var size: Int
    /// Pages mapped.
    public var pageCount: Int
    /// Physically contiguous runs (mmaps).
    public var runs: Int
    public var kind: AreaKind
    /// `file:line` of the vmalloc / vmap call.
    public var caller: String
    /// Allocated with `.movable`: its pages may migrate (VMalloc+Movable.swift).
    public var movable: Bool
  }

  /// The live areas, by address.
  public func areas() -> [AreaInfo] {
    let list = state.withLock { s in s.areas.values.map { $0 } }
    let base = UInt(bitPattern: windowBase)
    return list.sorted { $0.start < $1.start }.map { a in
      AreaInfo(
        address: base + UInt(a.start * PageGeometry.pageSize), size: (a.pageCount + 1) * PageGeometry.pageSize,
        pageCount: a.pageCount, runs: a.charged - 1, kind: a.kind, caller: "\(a.file):\(a.line)", movable: a.movable)
    }
  }

  /// The areas in the format of `/proc/vmallocinfo` (`s_show()` in mm/vmalloc.c): one line
  /// per area, by address,
  /// `0x<start>-0x<end> <size> <caller> pages=<n> vmalloc|vmap N0=<n>`, where the range
  /// and size include the guard page and `N0=` counts the pages on node 0 (PageAlloc has
  /// one node). Lines end with a newline.
  public func vmallocInfo() -> String {
    var out = ""
    for a in areas() {
      let start = hex16(a.address)
      let end = hex16(a.address + UInt(a.size))
      var size = String(a.size)
      if size.count < 7 { size = String(repeating: " ", count: 7 - size.count) + size }
      out += "0x\(start)-0x\(end) \(size) \(a.caller) pages=\(a.pageCount) \(a.kind.rawValue) N0=\(a.pageCount)\n"
    }
    return out
  }

  private func hex16(_ v: UInt) -> String {
    let s = String(v, radix: 16)
    return s.count >= 16 ? s : String(repeating: "0", count: 16 - s.count) + s
  }

  /// Checks the window and the area table and throws a `VerificationError` on the first
  /// broken invariant: free extents sorted, disjoint, merged and inside the window; every
  /// area's slot inside the window and disjoint from the free extents and other slots;
  /// free plus slotted pages equal the window; charged mappings equal the areas' charges;
  /// ``vmallocPageCount`` equals the vmalloc areas' pages; every vmalloc page holds a
  /// reference (refcount >= 1) in the allocator; every page of a movable area is in the
  /// movable-page table at its place and registered movable with the allocator.
  ///
  /// - Complexity: O(areas log areas + pages).
  public func verify() throws {
    struct Snapshot {
      var free: [Range<Int>]
      var areas: [Area]
      var charged: Int
      var movablePages: [Int: (start: Int, index: Int)]
    }
    let snap = state.withLock { s in
      Snapshot(free: s.window.free, areas: Array(s.areas.values), charged: s.charged, movablePages: s.movablePages)
    }
    func fail(_ m: String) -> VerificationError { VerificationError(message: "vmalloc: " + m) }
    var last = -1
    var total = 0
    for e in snap.free {
      guard !e.isEmpty, e.lowerBound > last, e.upperBound <= windowPages else {
        throw fail("free extent \(e) is empty, out of order, unmerged or outside the window")
      }
      last = e.upperBound
      total += e.count
    }
    var slots: [(Range<Int>, Bool)] = snap.free.map { ($0, true) }
    var charged = 0
    var vmallocPages = 0
    var movableCount = 0
    for a in snap.areas {
      guard a.slot.lowerBound <= a.start, a.start + a.pageCount + 1 <= a.slot.upperBound,
        a.slot.upperBound <= windowPages
      else { throw fail("area at page \(a.start) does not fit its slot \(a.slot)") }
      guard a.pages.count == a.pageCount else {
        throw fail("area at page \(a.start) has \(a.pages.count) pages, says \(a.pageCount)")
      }
      guard a.charged == VMalloc.runCount(a.pages) + 1 else {
        throw fail("area at page \(a.start) charged \(a.charged)")
      }
      slots.append((a.slot, false))
      total += a.slot.count
      charged += a.charged
      if a.kind == .vmalloc {
        vmallocPages += a.pageCount
        for p in a.pages where allocator.refcount(of: p) < 1 {
          throw fail("page \(p) of the area at page \(a.start) has refcount \(allocator.refcount(of: p))")
        }
      }
      if a.movable {
        movableCount += a.pages.count
        for (i, p) in a.pages.enumerated() {
          guard let m = snap.movablePages[p.value], m.start == a.start, m.index == i else {
            throw fail("page \(p) of the movable area at page \(a.start) is not in the movable-page table")
          }
          guard allocator.isMovable(p) else {
            throw fail("page \(p) of the movable area at page \(a.start) is not registered movable")
          }
        }
      }
    }
    slots.sort { $0.0.lowerBound < $1.0.lowerBound }
    for i in slots.indices.dropFirst() where slots[i - 1].0.upperBound > slots[i].0.lowerBound {
      throw fail("slots \(slots[i - 1].0) and \(slots[i].0) overlap")
    }
    guard total == windowPages else { throw fail("free \(total) of \(windowPages) pages accounted") }
    guard movableCount == snap.movablePages.count else {
      throw fail("the movable-page table has \(snap.movablePages.count) pages, movable areas \(movableCount)")
    }
    guard charged == snap.charged else { throw fail("charged \(snap.charged) mappings, areas hold \(charged)") }
    guard vmallocPages == vmallocPageCount else {
      throw fail("nr_vmalloc_pages \(vmallocPageCount), areas hold \(vmallocPages)")
    }
  }
}

import PageAlloc

/// One thing a caller owns, in the shape the allocator handed it out.
package enum Held: Hashable, Sendable {
  /// One allocation of `2^order` pages: refcount 1 on the head (0 when frozen); the
  /// tails of a non-compound block have refcount 0 until ``PageAllocator/splitPage(_:order:)``.
  case block(PFN, order: Int, frozen: Bool, compound: Bool)
  /// Contiguous order-0 pages, each with refcount 1 (0 when frozen): a split block, or
  /// what `allocContigPages`/`allocContigRange` return.
  case run(PFN, count: Int, frozen: Bool)
  /// Order-0 pages with refcount 1 in the order `allocPagesBulk` returned them.
  case pages([PFN])
  /// A movable block of `2^order` pages (compound above order 0) held through the
  /// driver's `MovablePageTable` under handle `id`: compaction may move it, so its pfn is
  /// asked from the table (``APISequence/pages(of:)``), never kept here.
  case movable(id: Int, order: Int)

  package var pageCount: Int {
    switch self {
    case .block(_, let o, _, _), .movable(_, let o): 1 << o
    case .run(_, let n, _): n
    case .pages(let p): p.count
    }
  }

  package var isFrozen: Bool {
    switch self {
    case .block(_, _, let f, _), .run(_, _, let f): f
    case .pages, .movable: false
    }
  }

  /// Whether the item is a movable block.
  package var isMovable: Bool {
    if case .movable = self { return true }
    return false
  }

  /// Whether the item covers `pfn` (any page of a block, tails included). Never for a
  /// movable block, whose pages only its table knows.
  package func covers(_ pfn: PFN) -> Bool {
    switch self {
    case .block(let p, let o, _, _): p <= pfn && pfn < p + (1 << o)
    case .run(let p, let n, _): p <= pfn && pfn < p + n
    case .pages(let ps): ps.contains(pfn)
    case .movable: false
    }
  }

  /// The `index`-th order-0 page of a run or a page list (any integer, taken modulo the
  /// page count); nil for a block, whose tails are not pages of their own.
  package func orderZeroPage(_ index: Int) -> PFN? {
    switch self {
    case .block, .movable: nil
    case .run(let p, let n, _): p + index.modulo(n)
    case .pages(let ps): ps[index.modulo(ps.count)]
    }
  }
}

/// What a caller of the allocator owns: the items it was handed, and the extra references
/// it took with `getPage` on order-0 pages of those items.
///
/// Each item owns exactly one reference per page (the allocation's, or none when frozen);
/// an extra reference is counted in ``references`` until it is put. When an item's pages
/// are freed while extra references remain, the freeing call only drops the item's
/// reference, so each such page stays allocated and comes back as a one-page run owning one
/// of the remaining references: the pages in use are always exactly the items' pages.
package struct HeldSet: Hashable, Sendable {
  package private(set) var items: [Held] = []
  /// Extra references by pfn (always on order-0 pages of non-frozen runs or page lists).
  package private(set) var references: [PFN: Int] = [:]
  /// Pages in use because of what is held (blocks count all their pages).
  package private(set) var pageCount = 0

  package init() {}

  package var count: Int { items.count }
  package var isEmpty: Bool { items.isEmpty }
  package subscript(i: Int) -> Held { items[i] }

  /// The index `pick` names (any integer, modulo the item count); nil when nothing is held.
  package func index(_ pick: Int) -> Int? {
    items.isEmpty ? nil : pick.modulo(items.count)
  }

  package mutating func append(_ h: Held) {
    items.append(h)
    pageCount += h.pageCount
  }

  /// Removes item `i` in O(1): the last item takes its place.
  package mutating func remove(at i: Int) -> Held {
    items.swapAt(i, items.count - 1)
    let h = items.removeLast()
    pageCount -= h.pageCount
    return h
  }

  package mutating func replace(at i: Int, with h: Held) {
    pageCount += h.pageCount - items[i].pageCount
    items[i] = h
  }

  package mutating func popLast() -> Held? {
    guard let h = items.popLast() else { return nil }
    pageCount -= h.pageCount
    return h
  }

  package mutating func addReference(_ pfn: PFN) { references[pfn, default: 0] += 1 }

  /// Drops one extra reference of `pfn`.
  package mutating func dropReference(_ pfn: PFN) {
    guard let r = references[pfn] else { return }
    references[pfn] = r > 1 ? r - 1 : nil
  }

  /// After a call dropped one reference on each of `pfns` (pages that left the items):
  /// those with extra references are still allocated, each now owned by one of them.
  package mutating func keepReferenced(_ pfns: some Sequence<PFN>) {
    guard !references.isEmpty else { return }
    for q in pfns where references[q] != nil {
      dropReference(q)
      append(.run(q, count: 1, frozen: false))
    }
  }

  /// Whether any held page is `pfn`.
  package func covers(_ pfn: PFN) -> Bool { items.contains { $0.covers(pfn) } }

  /// Whether any held page is in `range`.
  package func overlaps(_ range: Range<PFN>) -> Bool { items.contains { Self.overlaps($0, range) } }

  /// Whether a page of `h` is in `range`.
  package static func overlaps(_ h: Held, _ range: Range<PFN>) -> Bool {
    guard !range.isEmpty else { return false }
    switch h {
    case .block(let p, let o, _, _): return p < range.upperBound && range.lowerBound < p + (1 << o)
    case .run(let p, let n, _): return p < range.upperBound && range.lowerBound < p + n
    case .pages(let ps): return ps.contains { range.contains($0) }
    case .movable: return false
    }
  }

  /// The order-0 pages held in runs and page lists with the given frozenness.
  package func orderZeroPages(frozen: Bool) -> Set<PFN> {
    var s = Set<PFN>()
    for h in items {
      switch h {
      case .run(let p, let n, let f) where f == frozen: for i in 0..<n { s.insert(p + i) }
      case .pages(let ps) where !frozen: s.formUnion(ps)
      default: break
      }
    }
    return s
  }

  /// The pages ``APISequence/Op/freeStretch(pick:page:count:way:choice:)`` frees: from
  /// the `page`-th order-0 page of the `pick`-th item upwards, while the next pfn is a held
  /// order-0 page as frozen as the first, at most `count` pages (at least one). Nil when
  /// nothing is held or the item is a block.
  package func stretch(pick: Int, page: Int, count: Int) -> (pages: Range<PFN>, frozen: Bool)? {
    guard let i = index(pick), let start = items[i].orderZeroPage(page) else { return nil }
    let frozen = items[i].isFrozen
    let pages = orderZeroPages(frozen: frozen)
    var end = start + 1
    while end.value - start.value < count && pages.contains(end) { end += 1 }
    return (start..<end, frozen)
  }

  /// Takes the order-0 pages in `gone` out of the runs and page lists (runs are cut
  /// around them). The items keep their order, pieces of a cut run in place of it.
  package mutating func removeOrderZeroPages(_ gone: Set<PFN>) {
    guard let lo = gone.min(), let hi = gone.max() else { return }
    var out: [Held] = []
    out.reserveCapacity(items.count + 4)
    for h in items {
      switch h {
      case .run(let p, let n, let f) where p <= hi && lo < p + n:
        var start = p
        for i in 0..<n where gone.contains(p + i) {
          if p + i > start { out.append(.run(start, count: (p + i).value - start.value, frozen: f)) }
          start = p + i + 1
        }
        if p + n > start { out.append(.run(start, count: (p + n).value - start.value, frozen: f)) }
      case .pages(let ps):
        let kept = ps.filter { !gone.contains($0) }
        if !kept.isEmpty { out.append(.pages(kept)) }
      default:
        out.append(h)
      }
    }
    items = out
    pageCount -= gone.count
  }

  /// Every page in use because of what is held, ascending; a movable block's pages come
  /// from `movable(id)`, its table's pfn now.
  package func allocatedPFNs(movable: (Int) -> PFN? = { _ in nil }) -> [PFN] {
    var out: [PFN] = []
    out.reserveCapacity(pageCount)
    for h in items {
      switch h {
      case .block(let p, let o, _, _): for i in 0..<(1 << o) { out.append(p + i) }
      case .run(let p, let n, _): for i in 0..<n { out.append(p + i) }
      case .pages(let ps): out.append(contentsOf: ps)
      case .movable(let id, let o):
        if let p = movable(id) { for i in 0..<(1 << o) { out.append(p + i) } }
      }
    }
    return out.sorted()
  }
}

extension Int {
  /// The non-negative remainder (decoded picks may be any integer).
  @inline(__always)
  package func modulo(_ n: Int) -> Int {
    let r = self % n
    return r < 0 ? r + n : r
  }
}

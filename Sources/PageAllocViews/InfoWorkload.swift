import PageAlloc
import _PageAllocUtilities

/// The workloads `pagealloc info` and `pagealloc map` run before showing the views: each
/// leaves an allocator in a recognisable state. Deterministic for a given seed.
public enum InfoWorkload: String, CaseIterable, Sendable {
  /// THP-like order-9 movable blocks over half of memory and order-3 unmovable (slab-like)
  /// blocks over an eighth, then every third order-9 block freed: memory stays in large
  /// blocks.
  case highOrder = "high-order"
  /// 40000 random operations: allocations of orders 0-3 with Unmovable, Movable and
  /// Reclaimable flags, and frees of random live blocks (about 45% of operations).
  case random
  /// Every page allocated as order-0 pages (a quarter Unmovable), then all freed but one
  /// page in every 16: most memory is free, none of it above order 3.
  case fragment

  /// What the workload does, in one line.
  public var summary: String {
    switch self {
    case .highOrder: "order-9 movable over 1/2 of memory, order-3 unmovable over 1/8, every third order-9 freed"
    case .random: "40000 random allocs (orders 0-3, mixed types) and frees"
    case .fragment: "all memory allocated as order-0 pages, then 15 of every 16 freed"
    }
  }

  /// Runs the workload. Allocations use `.noWarn`; the allocator keeps what is not freed.
  /// Returns the blocks still allocated (pfn, order).
  @discardableResult
  public func run(on a: PageAllocator, seed: UInt64 = 42) -> [(pfn: PFN, order: Int)] {
    let total = a.managedPageCount
    var live: [(pfn: PFN, order: Int)] = []
    switch self {
    case .highOrder:
      var big: [PFN] = []
      while big.count * 512 < total / 2, let p = a.allocPages(order: 9, gfp: [.highUserMovable, .noWarn]) {
        big.append(p)
      }
      var small = 0
      while small * 8 < total / 8, let p = a.allocPages(order: 3, gfp: [.kernel, .noWarn]) {
        live.append((p, 3))
        small += 1
      }
      for (i, p) in big.enumerated() {
        if i % 3 == 0 { a.freePages(p, order: 9) } else { live.append((p, 9)) }
      }
    case .random:
      var rng = SeededRandom(seed: seed)
      let types: [GFP] = [.kernel, .highUserMovable, [.kernel, .reclaimable]]
      for _ in 0..<40000 {
        if !live.isEmpty && rng.below(100) < 45 {
          let i = rng.below(live.count)
          let b = live.swapAt(i)
          a.freePages(b.pfn, order: b.order)
        } else {
          let order = rng.below(4)
          let gfp = types[rng.below(3)].union(.noWarn)
          if let p = a.allocPages(order: order, gfp: gfp) { live.append((p, order)) }
        }
      }
    case .fragment:
      var pages: [PFN] = []
      var i = 0
      while true {
        let gfp: GFP = (i / 64) % 4 == 0 ? [.kernel, .noWarn] : [.highUserMovable, .noWarn]
        guard let p = a.allocPages(order: 0, gfp: gfp) else { break }
        pages.append(p)
        i += 1
      }
      for p in pages {
        if p.value % 16 == 7 { live.append((p, 0)) } else { a.freePages(p, order: 0) }
      }
    }
    return live
  }
}

extension Array where Element == (pfn: PFN, order: Int) {
  /// Removes element i in O(1) (order not kept).
  fileprivate mutating func swapAt(_ i: Int) -> Element {
    let e = self[i]
    self[i] = self[count - 1]
    removeLast()
    return e
  }
}

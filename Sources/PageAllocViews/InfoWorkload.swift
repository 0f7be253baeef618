import PageAlloc
import _PageAllocUtilities

/// The workloads `pagealloc info` and `pagealloc map` run before showing the views: each
/// leaves an allocator in a recognisable state. Deterministic for a given seed.
///
/// Every movable allocation is made with an owner (`MovablePageTable`), as a program's
/// movable pages would be: compaction (``InfoCompaction``) can move them afterwards.
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
  /// Returns the blocks still allocated (pfn, order), where they are when it returns.
  @discardableResult
  public func run(on a: PageAllocator, seed: UInt64 = 42) -> [(pfn: PFN, order: Int)] {
    let total = a.managedPageCount
    let owners = MovablePageTable(allocator: a)
    /// One allocation: a movable one through the owner table (it may move), an unmovable
    /// one directly.
    struct Block {
      var pfn: PFN
      var order: Int
      var handle: MovablePageTable.Handle?
    }
    func alloc(_ order: Int, _ gfp: GFP) -> Block? {
      guard gfp.contains(.movable) else {
        return a.allocPages(order: order, gfp: gfp).map { Block(pfn: $0, order: order) }
      }
      guard let h = owners.allocate(order: order, gfp: gfp), let p = owners.pfn(of: h) else { return nil }
      return Block(pfn: p, order: order, handle: h)
    }
    func free(_ b: Block) {
      if let h = b.handle { owners.free(h) } else { a.freePages(b.pfn, order: b.order) }
    }
    var live: [Block] = []
    switch self {
    case .highOrder:
      var big: [Block] = []
      while big.count * 512 < total / 2, let b = alloc(9, [.highUserMovable, .noWarn]) { big.append(b) }
      var small = 0
      while small * 8 < total / 8, let b = alloc(3, [.kernel, .noWarn]) {
        live.append(b)
        small += 1
      }
      for (i, b) in big.enumerated() {
        if i % 3 == 0 { free(b) } else { live.append(b) }
      }
    case .random:
      var rng = SeededRandom(seed: seed)
      let types: [GFP] = [.kernel, .highUserMovable, [.kernel, .reclaimable]]
      for _ in 0..<40000 {
        if !live.isEmpty && rng.below(100) < 45 {
          let i = rng.below(live.count)
          live.swapAt(i, live.count - 1)
          free(live.removeLast())
        } else {
          let order = rng.below(4)
          let gfp = types[rng.below(3)].union(.noWarn)
          if let b = alloc(order, gfp) { live.append(b) }
        }
      }
    case .fragment:
      var blocks: [Block] = []
      var i = 0
      while true {
        let gfp: GFP = (i / 64) % 4 == 0 ? [.kernel, .noWarn] : [.highUserMovable, .noWarn]
        guard let b = alloc(0, gfp) else { break }
        blocks.append(b)
        i += 1
      }
      for b in blocks {
        let now = b.handle.flatMap { owners.pfn(of: $0) } ?? b.pfn
        if now.value % 16 == 7 { live.append(b) } else { free(b) }
      }
    }
    return live.map { b in (b.handle.flatMap { owners.pfn(of: $0) } ?? b.pfn, b.order) }
  }
}

/// What `pagealloc info` and `pagealloc map` run after the workload, before the views.
public enum InfoCompaction: String, CaseIterable, Sendable {
  /// Nothing.
  case none
  /// `compactZone(order: 9)`: until one order-9 block is free (kcompactd's work).
  case zone
  /// `compactAll()`: every zone, whole (/proc/sys/vm/compact_memory).
  case all
  /// `compactProactively()`: down to the low mark of the proactiveness (20: score 80).
  case proactive

  /// Runs it; returns a one-line summary.
  @discardableResult
  public func run(on a: PageAllocator) -> String {
    let before = a.extfragScore
    switch self {
    case .none: return "no compaction"
    case .zone:
      let r = a.compactZone(order: PageGeometry.pageblockOrder)
      return "compactZone(order: 9): \(r), fragmentation score \(before) -> \(a.extfragScore)"
    case .all:
      let r = a.compactAll()
      return
        "compactAll(): \(r.map(\.description).joined(separator: ", ")), fragmentation score \(before) -> \(a.extfragScore)"
    case .proactive:
      let r = a.compactProactively()
      return
        "compactProactively(): \(r.ran ? "ran" : "not needed"), fragmentation score \(r.scoreBefore) -> \(r.scoreAfter)"
    }
  }
}

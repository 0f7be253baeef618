import Synchronization

/// One free list: `free_area[order].free_list[migratetype]` plus its count.
@usableFromInline
struct FreeList {
  @usableFromInline var head: UInt32
  @usableFromInline var tail: UInt32
  @usableFromInline var count: Int
}

/// A zone's state in raw memory: the analogue of `struct zone`.
///
/// Everything but the constant geometry is guarded by ``lock`` (`zone->lock`).
/// ``nrFreePages`` (NR_FREE_PAGES, which like the kernel's excludes isolated blocks and pcp
/// pages) is read without the lock by the watermark check, so it is an atomic written only
/// under the lock.
@usableFromInline
struct Zone: ~Copyable {
  @usableFromInline let lock: SpinLock
  @usableFromInline let nrFreePages: Atomic<Int>
  /// ZONE_BELOW_HIGH: set by an allocation whose high-watermark check failed here, cleared
  /// by a pcp free that drained while the zone was above high again. Read and written
  /// without the zone lock, as the kernel's `zone->flags` bit.
  @usableFromInline let belowHigh: Atomic<Bool>
  @usableFromInline let index: Int
  @usableFromInline let kind: ZoneKind
  /// zone_start_pfn and zone_end_pfn.
  @usableFromInline let start: Int
  @usableFromInline let end: Int
  /// ``FreeArea/listCount`` lists, `[listIndex(order, mt)]`.
  @usableFromInline let lists: UnsafeMutablePointer<FreeList>
  /// lowmem_reserve[highest zone kind]: ``ZoneKind/count`` entries.
  @usableFromInline let lowmemReserve: UnsafeMutablePointer<Int>
  @usableFromInline var spanned: Int
  @usableFromInline var present: Int
  @usableFromInline var managed: Int
  @usableFromInline var wmarkMin: Int
  @usableFromInline var wmarkLow: Int
  @usableFromInline var wmarkHigh: Int
  @usableFromInline var wmarkPromo: Int
  /// pcp batch, high_min and high_max (zone_batchsize, zone_highsize).
  @usableFromInline var batch: Int
  @usableFromInline var highMin: Int
  @usableFromInline var highMax: Int
  /// Events counted under the zone lock (the pcp path counts in its own pcp).
  @usableFromInline var pgfree: Int
  @usableFromInline var pgalloc: Int
  @usableFromInline var pgallocFailed: Int
  /// Blocks handed out by fallback (steal or claim), and pageblocks claimed.
  @usableFromInline var fallbackAllocs: Int
  @usableFromInline var pageblocksClaimed: Int
}

/// The `alloc_flags` bits the zonelist walk hands down to `rmqueue()` and the fallbacks.
@usableFromInline
struct AllocFlags: OptionSet, Sendable {
  @usableFromInline var rawValue: UInt8
  @inlinable init(rawValue: UInt8) { self.rawValue = rawValue }
  /// ALLOC_NOFRAGMENT: fall back only by claiming whole pageblocks, never by stealing.
  /// The first pass of a request whose preferred zone is ZONE_NORMAL carries it.
  @usableFromInline static let noFragment = AllocFlags(rawValue: 1 << 0)
  /// ALLOC_HIGHATOMIC: a high-order request that may not block and may use reserves, in
  /// the slow path. It never refills a pcp list and tries the HighAtomic lists first.
  @usableFromInline static let highAtomic = AllocFlags(rawValue: 1 << 1)
  /// ALLOC_NON_BLOCK: the request may not block; `rmqueue_buddy()` tries the HighAtomic
  /// lists when everything else failed.
  @usableFromInline static let nonBlock = AllocFlags(rawValue: 1 << 2)
}

/// `enum rmqueue_mode`: where `__rmqueue()` found blocks last, kept for one refill or one
/// `rmqueue_buddy()`: once a refill had to steal, the rest of it steals straight away. (The
/// kernel's RMQUEUE_CLAIM is never stored, and RMQUEUE_CMA is not needed: no pageblock is
/// ever CMA.)
@usableFromInline
enum RmqueueMode {
  case normal, steal
}

/// The shape of a zone's free lists: the kernel's `free_area[NR_PAGE_ORDERS]`, each with its
/// `free_list[MIGRATE_TYPES]`, kept as one array.
@usableFromInline
enum FreeArea {
  /// NR_PAGE_ORDERS * MIGRATE_TYPES lists per zone.
  @usableFromInline static let listCount = PageGeometry.orderCount * MigrateType.count
}

/// The index of `free_area[order].free_list[mt]` in ``Zone/lists``.
@inlinable @inline(__always)
func listIndex(_ order: Int, _ mt: Int) -> Int { order &* MigrateType.count &+ mt }

/// Per-CPU page lists for one (CPU, zone): the analogue of `struct per_cpu_pages`.
///
/// All fields but ``lock`` are guarded by it. The lists are laid out as ``PCPList`` says.
@usableFromInline
struct PerCPUPages: ~Copyable {
  @usableFromInline let lock: SpinLock
  @usableFromInline let lists: UnsafeMutablePointer<FreeList>
  /// Pages on all lists.
  @usableFromInline var count: Int
  @usableFromInline var high: Int
  @usableFromInline var highMin: Int
  @usableFromInline var highMax: Int
  @usableFromInline var batch: Int
  @usableFromInline var freeCount: Int
  @usableFromInline var allocFactor: Int
  /// PCPF_PREV_FREE_HIGH_ORDER: the last free was of order 1...PAGE_ALLOC_COSTLY_ORDER.
  @usableFromInline var prevFreeHighOrder: Bool
  /// PCPF_FREE_HIGH_BATCH: the CPU's cache slice holds more than three batches, so a burst
  /// of high-order frees keeps a batch cached (``PageAllocator/Configuration/pcpFreeHighBatch``).
  @usableFromInline var freeHighBatch: Bool
  @usableFromInline var pgalloc: Int
  @usableFromInline var pgfree: Int
  @usableFromInline var refills: Int
  @usableFromInline var drains: Int
}

/// The lists of a pcp, as the kernel's with THP: one per pcp migratetype for each order up
/// to PAGE_ALLOC_COSTLY_ORDER (index `MigrateType.pcpTypes * order + mt`), then two for the
/// pageblock (THP) order.
@usableFromInline
enum PCPList {
  /// NR_LOWORDER_PCP_LISTS: the lists of orders 0...PAGE_ALLOC_COSTLY_ORDER.
  @usableFromInline static let lowOrderCount = MigrateType.pcpTypes * (PageGeometry.costlyOrder + 1)
  /// The THP list of Unmovable and Reclaimable blocks.
  @usableFromInline static let thp = lowOrderCount
  /// The THP list of Movable blocks (``thp`` + 1, which `orderToPindex` relies on).
  @usableFromInline static let thpMovable = lowOrderCount + 1
  /// NR_PCP_LISTS.
  @usableFromInline static let count = lowOrderCount + 2
}

/// CONFIG_PCP_BATCH_SCALE_MAX
@usableFromInline let pcpBatchScaleMax = 5

/// The kernel's `clamp(v, lo, hi)`: `hi` when `v >= hi`, else `lo` when `v <= lo`, else `v`.
/// The order of the tests matters only when `lo > hi` (a zone whose low-watermark share per
/// CPU exceeds its high_max): then a `v` below `hi` gives `lo`, where `min(max(v, lo), hi)`
/// would give `hi`.
@inlinable @inline(__always)
func kernelClamp(_ v: Int, _ lo: Int, _ hi: Int) -> Int {
  v >= hi ? hi : (v <= lo ? lo : v)
}

/// `pcp_allowed_order()`: orders 0-3 and the pageblock (THP) order.
@inlinable @inline(__always)
func pcpAllowedOrder(_ order: Int) -> Bool {
  order <= PageGeometry.costlyOrder || order == PageGeometry.pageblockOrder
}

/// `order_to_pindex()`.
@inlinable @inline(__always)
func orderToPindex(_ mt: Int, _ order: Int) -> Int {
  // thp + 0 or 1 rather than a choice between the two names: the choice compiles to a
  // branch-free select computed on every pcp allocation, the sum to a rare branch.
  if order > PageGeometry.costlyOrder { return PCPList.thp &+ (mt == MigrateType.movable.rawValue ? 1 : 0) }
  return MigrateType.pcpTypes &* order &+ mt
}

/// `pindex_to_order()`.
@inlinable @inline(__always)
func pindexToOrder(_ pindex: Int) -> Int {
  pindex >= PCPList.lowOrderCount ? PageGeometry.pageblockOrder : pindex / MigrateType.pcpTypes
}

/// One zonelist, walked: the zone indices a request whose highest usable zone kind is
/// given may use, best first (`for_next_zone_zonelist_nodemask()`). The allocator keeps one
/// row of ``capacity`` entries per zone kind, `zonelists[kind * capacity + i]`, and
/// ``PageAllocator/zonelist(for:from:)`` walks one.
@usableFromInline
struct Zonelist: Sequence, IteratorProtocol {
  /// Entries per zonelist: one zone per kind at most.
  @usableFromInline static let capacity = ZoneKind.count
  /// Ends a zonelist shorter than ``capacity``.
  @usableFromInline static let end: Int8 = -1

  @usableFromInline let entries: UnsafeMutablePointer<Int8>
  @usableFromInline var position: Int

  @inlinable @inline(__always)
  init(entries: UnsafeMutablePointer<Int8>, position: Int) {
    self.entries = entries
    self.position = position
  }

  /// The preferred zone (the list's first entry), or ``end`` (negative) for an empty list.
  @inlinable @inline(__always)
  var preferred: Int { Int(entries[0]) }

  @inlinable @inline(__always)
  mutating func next() -> Int? {
    if position >= Zonelist.capacity { return nil }
    let zi = Int(entries[position])
    if zi < 0 { return nil }
    position &+= 1
    return zi
  }
}

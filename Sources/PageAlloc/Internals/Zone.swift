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
  @usableFromInline let index: Int
  @usableFromInline let kind: ZoneKind
  /// zone_start_pfn and zone_end_pfn.
  @usableFromInline let start: Int
  @usableFromInline let end: Int
  /// `[order * MIGRATE_TYPES + mt]`
  @usableFromInline let lists: UnsafeMutablePointer<FreeList>
  /// lowmem_reserve[highest zone index].
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

@usableFromInline
let migrateTypeCount = MigrateType.count

@inlinable @inline(__always)
func listIndex(_ order: Int, _ mt: Int) -> Int { order &* 6 &+ mt }

/// Per-CPU page lists for one (CPU, zone): the analogue of `struct per_cpu_pages`.
///
/// All fields but ``lock`` are guarded by it. Lists: orders 0-3 for each pcp migratetype
/// (index 3 * order + mt), and two lists at the pageblock order (12: Unmovable and
/// Reclaimable; 13: Movable), as the kernel's with THP.
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
  /// PCPF_PREV_FREE_HIGH_ORDER
  @usableFromInline var prevFreeHighOrder: Bool
  /// Round-robin cursor of free_pcppages_bulk.
  @usableFromInline var drainCursor: Int
  @usableFromInline var pgalloc: Int
  @usableFromInline var pgfree: Int
  @usableFromInline var refills: Int
  @usableFromInline var drains: Int
  @usableFromInline var trylockFailures: Int
}

/// NR_PCP_LISTS
@usableFromInline let pcpListCount = 14
/// CONFIG_PCP_BATCH_SCALE_MAX
@usableFromInline let pcpBatchScaleMax = 5

/// `pcp_allowed_order()`: orders 0-3 and the pageblock (THP) order.
@inlinable @inline(__always)
func pcpAllowedOrder(_ order: Int) -> Bool {
  order <= PageGeometry.costlyOrder || order == PageGeometry.pageblockOrder
}

/// `order_to_pindex()`.
@inlinable @inline(__always)
func orderToPindex(_ mt: Int, _ order: Int) -> Int {
  if order > PageGeometry.costlyOrder { return 12 &+ (mt == MigrateType.movable.rawValue ? 1 : 0) }
  return 3 &* order &+ mt
}

/// `pindex_to_order()`.
@inlinable @inline(__always)
func pindexToOrder(_ pindex: Int) -> Int {
  pindex >= 12 ? PageGeometry.pageblockOrder : pindex / 3
}

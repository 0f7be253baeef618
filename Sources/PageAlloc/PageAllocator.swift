internal import _PageAllocUtilities
import CPageAllocShim
import Glibc
import Synchronization

// The allocator object: its validating init and teardown, the lookups every path uses
// (`page_zone()`, the calling CPU's pcp, the chunk order of `free_prepared_contig_range()`),
// CPU pinning, and the memory behind the pfns.

/// The zoned buddy page allocator of one node, over real memory: `mm/page_alloc.c` in Swift.
///
/// Pages are named by ``PFN``. Allocation returns the head pfn of a `2^order` block, or
/// `nil` when the zones are below their watermark or out of blocks of that order: PageAlloc
/// has **no reclaim and no compaction**, so a request the kernel would satisfy by reclaiming
/// fails here. Frees go to a per-CPU list (orders 0-3 and 9) or to the zone's buddy free
/// lists, merging with free buddies. The chunked free of the 2026 series
/// (``freeContigRange(_:count:)``, ``freeContigFrozenRange(_:count:)``,
/// ``freePagesBulk(_:)-([PFN])``) frees a range of order-0 pages as the largest aligned
/// power-of-two chunks.
///
/// Thread safety: every method may be called from any thread. Each zone has a lock and each
/// (CPU, zone) pcp has its own lock taken with `tryLock`; the CPU is `sched_getcpu() %
/// cpuCount`.
///
/// Bad frees (double free, wrong order, foreign pfn, compound head to `freeContigRange`,
/// bad page state) never corrupt a free list: they are reported (``badPageReports``),
/// counted (``badPageCount``) and the offending page is quarantined.
public final class PageAllocator: @unchecked Sendable {
  public let configuration: Configuration
  @usableFromInline let memMap: MemMap
  @usableFromInline let arena: Arena
  @usableFromInline let zones: UnsafeMutablePointer<Zone>
  @usableFromInline let zoneCount: Int
  /// pcps[cpu * zoneCount + zone], ``pcpStride`` bytes apart.
  @usableFromInline let pcpBase: UnsafeMutableRawPointer
  @usableFromInline let cpuCount: Int
  /// zonelists[kind * Zonelist.capacity + i]: zone indices to try for a request whose
  /// highest zone is `kind`, best first; ``Zonelist/end`` ends a shorter list.
  @usableFromInline let zonelists: UnsafeMutablePointer<Int8>
  @usableFromInline let poisoning: Bool
  /// `is_check_pages_enabled()`: every page of a block is checked on free and on
  /// allocation (``Configuration/checkPages``, or a debug option that implies it). The one
  /// switch the free and allocation paths test.
  @usableFromInline let checksPages: Bool
  @usableFromInline let trapOnBad: Bool
  /// Quick test for the slow free path: poisoning or tracing on.
  @usableFromInline let tracing: Atomic<Bool>
  @usableFromInline let quarantined: Atomic<Int>
  @usableFromInline let hwpoisoned: Atomic<Int>
  /// UNEVICTABLE_PGCLEARED: pages freed while mlocked.
  @usableFromInline let mlockCleared: Atomic<Int>
  /// `vm.min_free_kbytes` the watermarks were set from: the configuration's, or the
  /// kernel's boot-time value for these zones.
  public let minFreeKbytes: Int
  let reports: LockedState<ReportLog>
  let traceSinkBox: LockedState<TraceTargets>
  /// Fault injection (fail_page_alloc); nil check is one load.
  let faultState: LockedState<FaultInjection?>
  @usableFromInline let faultsEnabled: Atomic<Bool>
  /// PageBlock and PageRun handles alive, counted in debug builds only (PageBlock.swift).
  @usableFromInline let liveHandles: Atomic<Int>
  /// Any memory-debugging step on (poisoning, page_owner, debug_pagealloc, init_on_alloc,
  /// init_on_free): the one branch the allocation and free paths test to reach the debug
  /// hooks (PageAllocator+DebugHooks.swift).
  @usableFromInline let debugging: Bool
  /// What the debug hooks do (DebugPageAlloc.swift).
  let debug: DebugSettings
  /// Set when debug_pagealloc ran out of mappings and gave up protecting free pages.
  let protectionLost: Atomic<Bool>
  /// mprotect calls made by debug_pagealloc (for tests: one per block or run).
  package let protectionChanges: Atomic<Int>

  /// Bytes from one pcp to the next in ``pcpBase``: three 64-byte cache lines, of which a
  /// ``PerCPUPages`` may fill two (``pcpSlotBytes``, checked in init). Different CPUs write
  /// neighbouring pcps on every allocation and free, so they must not share a line; the
  /// third line stays empty so that they do not share a 128-byte line pair either (the
  /// adjacent-line prefetcher pulls both lines of a pair), whether ``pcpBase``, 64-byte
  /// aligned, starts a pair or not.
  @usableFromInline static let pcpStride = 192
  /// The bytes of a pcp slot a ``PerCPUPages`` may use: all but the empty line.
  static let pcpSlotBytes = 128

  /// Creates an allocator with all zone memory free.
  ///
  /// - Throws: ``ConfigurationError`` for an invalid configuration or when the memory
  ///   cannot be mapped.
  public init(configuration: Configuration) throws(ConfigurationError) {
    let c = configuration
    guard !c.zones.isEmpty else { throw ConfigurationError.noZones }
    let sp = c.sectionPages
    guard sp >= 1 << 10, sp <= 1 << 24, sp & (sp - 1) == 0 else {
      throw ConfigurationError.badSectionSize(sp)
    }
    guard (1...1024).contains(c.cpuCount) else { throw ConfigurationError.badCPUCount(c.cpuCount) }
    guard !(c.debugPageAlloc && c.backing == .none) else { throw ConfigurationError.debugPageAllocNeedsMemory }
    try PageAllocator.validateSysctls(c)
    try PageAllocator.validateZones(c.zones)
    for h in c.holes {
      guard h.lowerBound.value % sp == 0, h.upperBound.value % sp == 0 else {
        throw ConfigurationError.holeNotSectionAligned(h)
      }
    }
    let spanning = c.zones.filter { !$0.pfns.isEmpty }
    guard let firstZone = spanning.first, let lastZone = spanning.last else { throw ConfigurationError.noMemory }
    let shift = sp.trailingZeroBitCount
    let base = firstZone.pfns.lowerBound.value & ~(sp - 1)
    let end = (lastZone.pfns.upperBound.value + sp - 1) & ~(sp - 1)
    let holes = c.holes
    memMap = try MemMap(
      basePFN: base, endPFN: end, sectionShift: shift,
      present: { s in
        let r = PFN(s)..<PFN(s + sp)
        if holes.contains(where: { $0.overlaps(r) }) { return false }
        return spanning.contains(where: { $0.pfns.overlaps(r) })
      })
    do {
      arena = try Arena(backing: c.backing, basePFN: base, endPFN: end)
    } catch {
      memMap.deallocate()
      throw error
    }
    self.configuration = c
    cpuCount = c.cpuCount
    zoneCount = c.zones.count
    poisoning = c.poisonPages && c.backing != .none
    // mem_debugging_and_hardening_init(): page poisoning, init_on_alloc, init_on_free and
    // debug_pagealloc turn the checks on as well (page_owner does not).
    checksPages = c.checkPages || c.poisonPages || c.initOnAlloc || c.initOnFree || c.debugPageAlloc
    trapOnBad = c.trapOnBadPage
    tracing = Atomic(false)
    quarantined = Atomic(0)
    hwpoisoned = Atomic(0)
    mlockCleared = Atomic(0)
    reports = LockedState(ReportLog())
    traceSinkBox = LockedState(TraceTargets())
    faultState = LockedState(nil)
    faultsEnabled = Atomic(false)
    liveHandles = Atomic(0)
    protectionLost = Atomic(false)
    protectionChanges = Atomic(0)
    debug = DebugSettings(configuration: c, arena: arena, basePFN: base, endPFN: end)
    debugging = debug.any || poisoning

    let map = memMap
    let layouts = c.zones.map { ZoneLayout($0, map) }
    zonelists = PageAllocator.makeZonelists(c.zones, populated: layouts.map { $0.present > 0 })
    zones = PageAllocator.makeZones(c.zones)
    precondition(MemoryLayout<PerCPUPages>.size <= PageAllocator.pcpSlotBytes)
    pcpBase = .allocate(byteCount: PageAllocator.pcpStride * c.cpuCount * c.zones.count, alignment: 64)
    minFreeKbytes = c.minFreeKbytes ?? PageAllocator.bootMinFreeKbytes(c.zones, layouts)
    markReservedPages(layouts)
    freeAllMemory(layouts)
    setupWatermarks()
    setupPageSets()
  }

  deinit {
    checkNoLiveHandles()
    drainAllPages()
    for i in 0..<zoneCount {
      zones[i].lists.deallocate()
      zones[i].lowmemReserve.deallocate()
    }
    for i in 0..<(cpuCount * zoneCount) { pcp(i).pointee.lists.deallocate() }
    pcpBase.deallocate()
    zones.deinitialize(count: zoneCount)
    zones.deallocate()
    zonelists.deallocate()
    debug.deallocate()
    arena.deallocate()
    memMap.deallocate()
  }

  // MARK: - Geometry helpers

  @inlinable @inline(__always)
  func pcp(_ i: Int) -> UnsafeMutablePointer<PerCPUPages> {
    (pcpBase + i &* PageAllocator.pcpStride).assumingMemoryBound(to: PerCPUPages.self)
  }

  /// The pcp set of the calling thread's CPU for zone `zi`.
  @inlinable @inline(__always)
  func localPcp(_ zi: Int) -> UnsafeMutablePointer<PerCPUPages> {
    var cpu = Int(cpa_current_cpu())
    if _slowPath(cpu >= cpuCount) { cpu %= cpuCount }
    return pcp(cpu &* zoneCount &+ zi)
  }

  /// `page_zone()`: the index of the zone holding `pfn`, or nil.
  @inlinable @inline(__always)
  func zoneIndex(_ pfn: Int) -> Int? {
    var i = 0
    while i < zoneCount {
      let z = zones + i
      if pfn >= z.pointee.start && pfn < z.pointee.end { return i }
      i &+= 1
    }
    return nil
  }

  /// The zones a request whose highest usable zone kind is `highest` may use, best first,
  /// from entry `start` of its zonelist on.
  @inlinable @inline(__always)
  func zonelist(for highest: Int, from start: Int = 0) -> Zonelist {
    Zonelist(entries: zonelists + highest &* Zonelist.capacity, position: start)
  }

  /// The record and zone index of `pfn`, or nil when `pfn` has no record or lies outside
  /// every zone: then the call `op` is reported (``BadPageReport/Kind/outsideZones``) and
  /// must do nothing. The guard every entry point taking a pfn starts with.
  @inlinable @inline(__always)
  func resolve(_ pfn: Int, _ op: String) -> (record: UnsafeMutablePointer<PageRecord>, zone: Int)? {
    guard let r = memMap.record(pfn), let zi = zoneIndex(pfn) else {
      reportBad(pfn, .outsideZones, "pfn outside every zone", op, quarantine: false)
      return nil
    }
    return (r, zi)
  }

  /// The order of the largest aligned block at `pfn` that fits in `n` pages (pfn 0 starts
  /// at MAX_PAGE_ORDER, since __ffs(0) is undefined).
  @inlinable @inline(__always)
  static func chunkOrder(_ pfn: Int, _ n: Int) -> Int {
    let align = pfn == 0 ? PageGeometry.maxOrder : pfn.trailingZeroBitCount
    return min(align, PageGeometry.floorLog2(n), PageGeometry.maxOrder)
  }

  // MARK: - CPUs

  /// Pins the calling thread's pcp choice to logical CPU `cpu` (used modulo
  /// ``Configuration/cpuCount``), or with nil goes back to `sched_getcpu()`. Tests and
  /// benchmarks use it for deterministic runs; it does not change the thread's affinity.
  public static func setThreadCPU(_ cpu: Int?) {
    cpa_set_thread_cpu_override(Int32(cpu ?? -1))
  }

  /// The number of CPUs online (`get_nprocs()`): a natural ``Configuration/cpuCount``.
  public static var onlineCPUCount: Int { Int(cpa_online_cpus()) }

  /// Runs `body` with the calling thread pinned to logical CPU `cpu`'s pcp set (see
  /// ``setThreadCPU(_:)``), and restores the thread's previous choice afterwards, also when
  /// `body` throws.
  public static func withThreadCPU<R: ~Copyable, E: Error>(
    _ cpu: Int, _ body: () throws(E) -> R
  ) throws(E) -> R {
    let previous = cpa_thread_cpu_override()
    cpa_set_thread_cpu_override(Int32(cpu))
    defer { cpa_set_thread_cpu_override(previous) }
    return try body()
  }

  /// The logical CPU (pcp set) the calling thread uses now.
  public var currentCPU: Int { Int(cpa_current_cpu()) % cpuCount }

  // MARK: - Memory

  /// The address of `pfn`'s 4 KiB page, or nil with backing `.none` or outside the memmap.
  public func address(of pfn: PFN) -> UnsafeMutableRawPointer? {
    guard pfn.value >= memMap.basePFN, pfn.value < memMap.endPFN else { return nil }
    return arena.address(of: pfn.value)
  }

  /// The memfd behind the arena (-1 unless the backing is `.memfd`), and the byte offset
  /// of a pfn in it: what a second mapping of the same page needs.
  public var memfd: Int32 { arena.fd }

  /// The byte offset of `pfn` in ``memfd``.
  public func memfdOffset(of pfn: PFN) -> Int { arena.fileOffset(of: pfn.value) }

  /// The pfns the memmap covers (section aligned; includes holes).
  public var pfnSpan: Range<PFN> { PFN(memMap.basePFN)..<PFN(memMap.endPFN) }

  /// Whether `pfn` has a page record (inside a present section).
  public func isPresent(_ pfn: PFN) -> Bool { memMap.record(pfn.value) != nil }

  /// The zone kind holding `pfn`, or nil.
  public func zoneKind(of pfn: PFN) -> ZoneKind? {
    zoneIndex(pfn.value).map { zones[$0].kind }
  }

  /// The pageblock's migratetype (``MigrateType/isolate`` when isolated).
  public func migrateType(of pfn: PFN) -> MigrateType? {
    guard memMap.record(pfn.value) != nil else { return nil }
    return memMap.freeListType(pfn.value)
  }

  /// Gives the memory of every page now free in the buddy back to the OS (`MADV_REMOVE` /
  /// hole punching): free pages then read back as zeroes and cost no RAM. Returns the pages
  /// discarded. The pcp lists are drained first. With poisoning, the discarded pages are
  /// no longer checked on allocation (they hold zeroes, not poison).
  @discardableResult
  public func releaseFreeMemory() -> Int {
    guard arena.base != nil else { return 0 }
    drainAllPages()
    var total = 0
    for i in 0..<zoneCount {
      let z = zones + i
      z.pointee.lock.lock()
      for idx in 0..<FreeArea.listCount {
        var p = z.pointee.lists[idx].head
        while p != PageRecord.nilLink {
          let r = memMap.presentRecord(Int(p))
          let order = PG.order(r.pointee.flags.load(ordering: .relaxed))
          arena.discard(Int(p), count: 1 << order)
          // Discarded pages read back as zeroes: they hold no poison to check any more.
          if let marks = debug.poisoned { (marks + (Int(p) - debug.basePFN)).update(repeating: 0, count: 1 << order) }
          total += 1 << order
          p = r.pointee.next
        }
      }
      z.pointee.lock.unlock()
    }
    return total
  }
}

internal import _PageAllocUtilities
import CPageAllocShim
import Glibc
import Synchronization

/// The zoned buddy page allocator of one node, over real memory: `mm/page_alloc.c` in Swift.
///
/// Pages are named by ``PFN``. Allocation returns the head pfn of a `2^order` block, or
/// `nil` when the zones are below their watermark or out of blocks of that order: PageAlloc
/// has **no reclaim and no compaction**, so a request the kernel would satisfy by reclaiming
/// fails here. Frees go to a per-CPU list (orders 0-3 and 9) or to the zone's buddy free
/// lists, merging with free buddies. The chunked free of the 2026 series
/// (``freeContigRange(_:count:)``, ``freeContigFrozenRange(_:count:)``,
/// ``freePagesBulk(_:)``) frees a range of order-0 pages as the largest aligned
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
  /// pcps[cpu * zoneCount + zone], each on its own 128-byte line.
  @usableFromInline let pcpBase: UnsafeMutableRawPointer
  @usableFromInline let cpuCount: Int
  /// zonelists[kind * 4 + i]: zone indices to try for a request whose highest zone is
  /// `kind`, best first; -1 ends the list.
  @usableFromInline let zonelists: UnsafeMutablePointer<Int8>
  @usableFromInline let poisoning: Bool
  @usableFromInline let trapOnBad: Bool
  /// Quick test for the slow free path: poisoning or tracing on.
  @usableFromInline let tracing: Atomic<Bool>
  @usableFromInline let quarantined: Atomic<Int>
  @usableFromInline let hwpoisoned: Atomic<Int>
  let reports: LockedState<ReportLog>
  let traceSinkBox: LockedState<TraceTargets>
  /// Fault injection (fail_page_alloc); nil check is one load.
  let faultState: LockedState<FaultInjection?>
  @usableFromInline let faultsEnabled: Atomic<Bool>
  /// PageBlock and PageRun handles alive, counted in debug builds only (PageBlock.swift).
  @usableFromInline let liveHandles: Atomic<Int>

  @usableFromInline static let pcpStride = 192

  /// Creates an allocator with all zone memory free.
  ///
  /// - Throws: ``ConfigurationError`` for an invalid configuration or when the memory
  ///   cannot be mapped.
  public init(configuration: Configuration) throws {
    let c = configuration
    guard !c.zones.isEmpty else { throw ConfigurationError.noZones }
    let sp = c.sectionPages
    guard sp >= 1 << 10, sp <= 1 << 24, sp & (sp - 1) == 0 else {
      throw ConfigurationError.badSectionSize(sp)
    }
    guard (1...1024).contains(c.cpuCount) else { throw ConfigurationError.badCPUCount(c.cpuCount) }
    var seen = Set<ZoneKind>()
    for (i, z) in c.zones.enumerated() {
      guard !z.pfns.isEmpty else { throw ConfigurationError.emptyZone(z.kind) }
      guard z.pfns.lowerBound.value >= 0 else { throw ConfigurationError.negativePFN(z.pfns.lowerBound) }
      guard z.pfns.upperBound.value < Int(UInt32.max) - 1 else {
        throw ConfigurationError.pfnTooLarge(z.pfns.upperBound)
      }
      guard seen.insert(z.kind).inserted else { throw ConfigurationError.duplicateZone(z.kind) }
      if i > 0 {
        let p = c.zones[i - 1]
        guard p.kind < z.kind, p.pfns.upperBound <= z.pfns.lowerBound else {
          throw ConfigurationError.zonesOverlapOrOutOfOrder(p.kind, z.kind)
        }
      }
    }
    for h in c.holes {
      guard h.lowerBound.value % sp == 0, h.upperBound.value % sp == 0 else {
        throw ConfigurationError.holeNotSectionAligned(h)
      }
    }
    let shift = sp.trailingZeroBitCount
    let base = c.zones.first!.pfns.lowerBound.value & ~(sp - 1)
    let end = (c.zones.last!.pfns.upperBound.value + sp - 1) & ~(sp - 1)
    let zonesCfg = c.zones
    let holes = c.holes
    memMap = try MemMap(
      basePFN: base, endPFN: end, sectionShift: shift,
      present: { s in
        let r = PFN(s)..<PFN(s + sp)
        if holes.contains(where: { $0.overlaps(r) }) { return false }
        return zonesCfg.contains(where: { $0.pfns.overlaps(r) })
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
    trapOnBad = c.trapOnBadPage
    tracing = Atomic(false)
    quarantined = Atomic(0)
    hwpoisoned = Atomic(0)
    reports = LockedState(ReportLog())
    traceSinkBox = LockedState(TraceTargets())
    faultState = LockedState(nil)
    faultsEnabled = Atomic(false)
    liveHandles = Atomic(0)

    // Zonelists: for each highest kind, the configured zones of that kind or lower, highest
    // first (Movable -> Normal -> DMA32 -> DMA).
    zonelists = .allocate(capacity: 16)
    zonelists.initialize(repeating: -1, count: 16)
    for kind in ZoneKind.allCases {
      var i = 0
      for (zi, z) in c.zones.enumerated().reversed() where z.kind <= kind {
        zonelists[kind.rawValue * 4 + i] = Int8(zi)
        i += 1
      }
    }

    zones = .allocate(capacity: c.zones.count)
    for (i, zc) in c.zones.enumerated() {
      let lists = UnsafeMutablePointer<FreeList>.allocate(capacity: 11 * 6)
      lists.initialize(repeating: FreeList(head: PageRecord.nilLink, tail: PageRecord.nilLink, count: 0), count: 66)
      let reserve = UnsafeMutablePointer<Int>.allocate(capacity: 4)
      reserve.initialize(repeating: 0, count: 4)
      (zones + i).initialize(
        to: Zone(
          lock: SpinLock(word: Atomic(0)), nrFreePages: Atomic(0), index: i, kind: zc.kind,
          start: zc.pfns.lowerBound.value, end: zc.pfns.upperBound.value, lists: lists,
          lowmemReserve: reserve, spanned: zc.pfns.count, present: 0, managed: 0, wmarkMin: 0,
          wmarkLow: 0, wmarkHigh: 0, wmarkPromo: 0, batch: 1, highMin: 0, highMax: 0, pgfree: 0,
          pgalloc: 0, pgallocFailed: 0, fallbackAllocs: 0, pageblocksClaimed: 0))
    }
    pcpBase = .allocate(byteCount: PageAllocator.pcpStride * c.cpuCount * c.zones.count, alignment: 64)

    // Reserved records: pages of present sections outside every zone (memmap holes inside
    // a section) are PG_reserved, as the kernel's memmap_init marks them.
    var pfn = base
    while pfn < end {
      if memMap.record(pfn) != nil {
        let secEnd = memMap.sectionEnd(pfn)
        var p = pfn
        while p < secEnd {
          if zoneIndexSlow(p) == nil {
            memMap.presentRecord(p).pointee.flags.store(PG.reserved, ordering: .relaxed)
          }
          p += 1
        }
      }
      pfn = memMap.sectionEnd(pfn)
    }

    // Present and managed pages, then the free memory (memblock_free_all: max-order aligned
    // blocks straight onto the free lists, all pageblocks Movable).
    for i in 0..<zoneCount {
      let z = zones + i
      var present = 0
      var p = z.pointee.start
      while p < z.pointee.end {
        let segEnd = min(memMap.sectionEnd(p), z.pointee.end)
        if memMap.record(p) != nil {
          present += segEnd - p
          var q = p
          while q < segEnd {
            let order = chunkOrder(q, segEnd &- q)
            addToFreeList(z, q, order, MigrateType.movable.rawValue, tail: true)
            q += 1 << order
          }
        }
        p = segEnd
      }
      z.pointee.present = present
      z.pointee.managed = present
    }
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

  func zoneIndexSlow(_ pfn: Int) -> Int? {
    configuration.zones.firstIndex(where: { $0.pfns.contains(PFN(pfn)) })
  }

  /// The order of the largest aligned block at `pfn` that fits in `n` pages (pfn 0 starts
  /// at MAX_PAGE_ORDER, since __ffs(0) is undefined).
  @inlinable @inline(__always)
  func chunkOrder(_ pfn: Int, _ n: Int) -> Int {
    let align = pfn == 0 ? PageGeometry.maxOrder : pfn.trailingZeroBitCount
    let fit = (Int.bitWidth &- 1) &- n.leadingZeroBitCount
    return min(align, fit, PageGeometry.maxOrder)
  }

  // MARK: - Setup

  /// `__setup_per_zone_wmarks()` and `setup_per_zone_lowmem_reserve()`.
  func setupWatermarks() {
    // min_free_kbytes = sqrt(lowmem_kbytes * 16), clamped to [128, 262144].
    var lowmemPages = 0
    for i in 0..<zoneCount where zones[i].kind != .movable { lowmemPages += zones[i].managed }
    let lowmemKB = lowmemPages * 4
    var minFreeKB = Int(Double(lowmemKB * 16).squareRoot())
    minFreeKB = min(max(minFreeKB, 128), 262144)
    let pagesMin = minFreeKB / 4
    for i in 0..<zoneCount {
      let z = zones + i
      let managed = z.pointee.managed
      var minWm: Int
      if z.pointee.kind == .movable {
        // Like highmem: a small fixed reserve, managed/1024 in [SWAP_CLUSTER_MAX, 128].
        minWm = min(max(managed / 1024, 32), 128)
      } else {
        minWm = lowmemPages > 0 ? pagesMin * managed / lowmemPages : 0
      }
      // watermark_scale_factor = 10 (0.1%).
      let delta = max(minWm / 4, managed * 10 / 10000)
      z.pointee.wmarkMin = minWm
      z.pointee.wmarkLow = minWm + delta
      z.pointee.wmarkHigh = minWm + 2 * delta
      z.pointee.wmarkPromo = minWm + 3 * delta
    }
    // lowmem_reserve[j] of zone i (j > i) = managed pages of zones i+1...j / ratio[i].
    for i in 0..<zoneCount {
      let zi = zones + i
      for j in 0..<zoneCount where zones[j].kind > zi.pointee.kind {
        let ratio = zi.pointee.kind.lowmemReserveRatio
        var sum = 0
        for k in (i + 1)...j { sum += zones[k].managed }
        zi.pointee.lowmemReserve[zones[j].kind.rawValue] = ratio > 0 ? sum / ratio : 0
      }
      // Reserve indexed by kind; fill kinds without a zone from the next lower zone kind.
      var last = 0
      for k in 0..<4 {
        if zi.pointee.lowmemReserve[k] != 0 { last = zi.pointee.lowmemReserve[k] }
        else if k > zi.pointee.kind.rawValue { zi.pointee.lowmemReserve[k] = last }
      }
    }
  }

  /// `zone_batchsize()`, `zone_highsize()` and `pageset_init()`.
  ///
  /// batch = rounddown_pow_of_two(b + b/2) - 1 with b = min(managed >> 12, 64): 63 for any
  /// zone of 1 GiB or more. high_min = low watermark / CPUs and high_max = managed / 8 /
  /// CPUs (both at least 4 * batch), or managed / fraction / CPUs for both when
  /// `percpuPagelistHighFraction` is set. `high` starts at high_min and is tuned between
  /// the two (see ``PerCPUPages``).
  func setupPageSets() {
    for i in 0..<zoneCount {
      let z = zones + i
      var b = min(z.pointee.managed >> 12, 64)
      if b < 1 { b = 1 }
      b = b + b / 2
      var batch = 1
      while batch * 2 <= b { batch *= 2 }
      batch = max(batch - 1, 1)
      var highMin: Int
      var highMax: Int
      let frac = configuration.percpuPagelistHighFraction
      if frac > 0 {
        highMin = max(z.pointee.managed / frac / cpuCount, 4 * batch)
        highMax = highMin
      } else {
        highMin = max(z.pointee.wmarkLow / cpuCount, 4 * batch)
        highMax = max(z.pointee.managed / 8 / cpuCount, 4 * batch)
        highMax = max(highMax, highMin)
      }
      z.pointee.batch = batch
      z.pointee.highMin = highMin
      z.pointee.highMax = highMax
      for cpu in 0..<cpuCount {
        let lists = UnsafeMutablePointer<FreeList>.allocate(capacity: pcpListCount)
        lists.initialize(
          repeating: FreeList(head: PageRecord.nilLink, tail: PageRecord.nilLink, count: 0),
          count: pcpListCount)
        let raw = pcpBase + (cpu * zoneCount + i) * PageAllocator.pcpStride
        raw.bindMemory(to: PerCPUPages.self, capacity: 1).initialize(
          to: PerCPUPages(
            lock: SpinLock(word: Atomic(0)), lists: lists, count: 0, high: highMin,
            highMin: highMin, highMax: highMax, batch: batch, freeCount: 0, allocFactor: 0,
            prevFreeHighOrder: false, drainCursor: 0, pgalloc: 0, pgfree: 0, refills: 0,
            drains: 0, trylockFailures: 0))
      }
    }
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
  /// discarded. The pcp lists are drained first.
  @discardableResult
  public func releaseFreeMemory() -> Int {
    guard arena.base != nil else { return 0 }
    drainAllPages()
    var total = 0
    for i in 0..<zoneCount {
      let z = zones + i
      z.pointee.lock.lock()
      for idx in 0..<66 {
        var p = z.pointee.lists[idx].head
        while p != PageRecord.nilLink {
          let r = memMap.presentRecord(Int(p))
          let order = PG.order(r.pointee.flags.load(ordering: .relaxed))
          arena.discard(Int(p), count: 1 << order)
          total += 1 << order
          p = r.pointee.next
        }
      }
      z.pointee.lock.unlock()
    }
    return total
  }
}

/// One zone of the single node: its kind, the pfns it spans, and the pages in that span
/// the allocator does not manage.
///
/// The kernel's three counts follow: `spanned` is the span, `present` leaves out
/// ``unavailable`` pages (and memmap holes, ``PageAllocator/Configuration/holes``),
/// `managed` also leaves out ``reserved`` pages. Both kinds of page are PG_reserved, as
/// the kernel's are: never on a free list, and a free of one is a bad page.
public struct ZoneConfiguration: Sendable, Hashable {
  public var kind: ZoneKind
  /// zone_start_pfn ..< zone_end_pfn. May be empty: the kernel keeps every zone kind, and
  /// a zone with no pages (ZONE_MOVABLE unless configured, ZONE_DEVICE until memory is
  /// hot-added) still has watermarks and a protection row in /proc/zoneinfo.
  public var pfns: Range<PFN>
  /// Ranges inside ``pfns`` with no memory behind them, smaller than a memmap section
  /// (a firmware hole such as the 640 KiB-1 MiB gap of the DMA zone): not present.
  public var unavailable: [Range<PFN>]
  /// Present pages the allocator never gets (memblock reservations at boot: the kernel
  /// image, firmware tables, crash kernel, struct pages not yet initialised): not managed.
  public var reserved: [Range<PFN>]

  public init(kind: ZoneKind, pfns: Range<PFN>, unavailable: [Range<PFN>] = [], reserved: [Range<PFN>] = []) {
    self.kind = kind
    self.pfns = pfns
    self.unavailable = unavailable
    self.reserved = reserved
  }

  /// A zone of `kind` with no pages.
  public static func empty(_ kind: ZoneKind) -> ZoneConfiguration {
    ZoneConfiguration(kind: kind, pfns: PFN(0)..<PFN(0))
  }
}

/// What backs the pfns with memory.
public enum Backing: Sendable, Hashable {
  /// A memfd mapped `MAP_SHARED`: the default, and what vmalloc needs to map the same pages
  /// at a second address.
  case memfd
  /// Private anonymous memory.
  case anonymous
  /// No memory: page metadata only (trace replay of big machines, tests).
  case none
}

/// Configuration errors, thrown by ``PageAllocator/init(configuration:)``.
public enum ConfigurationError: Error, Equatable, CustomStringConvertible {
  case noZones
  /// Every configured zone is empty.
  case noMemory
  /// ZONE_DEVICE memory is never managed by the buddy allocator: the zone must be empty.
  case deviceZoneNotEmpty
  case duplicateZone(ZoneKind)
  case zonesOverlapOrOutOfOrder(ZoneKind, ZoneKind)
  /// An unavailable or reserved range outside its zone, or overlapping another one.
  case badZoneRange(ZoneKind, Range<PFN>)
  case badSectionSize(Int)
  case badCPUCount(Int)
  case pfnTooLarge(PFN)
  case negativePFN(PFN)
  case holeNotSectionAligned(Range<PFN>)
  /// A sysctl value the kernel would refuse (its name under /proc/sys/vm, and the value;
  /// for lowmem_reserve_ratio, a negative entry or the number of entries given).
  case badSysctl(String, Int)
  case mapFailed(String, errno: Int32)
  /// ``PageAllocator/Configuration/debugPageAlloc`` with backing `.none`: there is no memory
  /// to protect.
  case debugPageAllocNeedsMemory

  public var description: String {
    switch self {
    case .noZones: "configuration has no zones"
    case .noMemory: "every zone of the configuration is empty"
    case .deviceZoneNotEmpty: "the Device zone must be empty (ZONE_DEVICE pages are not managed by the buddy)"
    case .duplicateZone(let k): "zone \(k) is given twice"
    case .zonesOverlapOrOutOfOrder(let a, let b):
      "zones \(a) and \(b) overlap or are not in ascending pfn order"
    case .badZoneRange(let k, let r):
      "zone \(k): range \(r.lowerBound)..<\(r.upperBound) lies outside the zone or overlaps another range"
    case .badSectionSize(let n):
      "sectionPages \(n) must be a power of two from 1024 (2^10) to 2^24 pages"
    case .badCPUCount(let n): "cpuCount \(n) must be 1...1024"
    case .pfnTooLarge(let p): "pfn \(p) is beyond the supported 2^32-2"
    case .negativePFN(let p): "pfn \(p) is negative"
    case .holeNotSectionAligned(let r): "hole \(r.lowerBound)..<\(r.upperBound) is not section aligned"
    case .badSysctl(let name, let v):
      name == "lowmem_reserve_ratio"
        ? "lowmem_reserve_ratio needs \(ZoneKind.count) entries of 0 or more (got \(v))"
        : "\(name) \(v) is out of the kernel's range"
    case .mapFailed(let what, let e): "\(what) failed: errno \(e)"
    case .debugPageAllocNeedsMemory: "debugPageAlloc needs backed memory (.memfd or .anonymous), not .none"
    }
  }
}

extension PageAllocator {
  /// How to build an allocator: the node's zones, CPUs, memory backing and memmap geometry.
  public struct Configuration: Sendable {
    /// The zones, in ascending kind (DMA, DMA32, Normal, Movable, Device) and, for those
    /// with pages, ascending pfn order. Kinds left out are empty zones.
    public var zones: [ZoneConfiguration]
    /// Number of per-CPU page sets. A thread uses set `sched_getcpu() % cpuCount`.
    public var cpuCount: Int
    /// The memory behind the pfns.
    public var backing: Backing
    /// Pages per memmap section (the kernel's PAGES_PER_SECTION: 2^15 on x86-64). A power of
    /// two, at least 2^10 (one max-order block) so no buddy block crosses a section.
    public var sectionPages: Int
    /// Section-aligned pfn ranges with no memory (holes in the memmap).
    public var holes: [Range<PFN>]
    /// Turn bad-page reports into traps (the debug option; off by default).
    public var trapOnBadPage: Bool
    /// Page poisoning (CONFIG_PAGE_POISONING with `page_poison=1`): fill each page with
    /// 0xaa on free and check the pattern on allocation. Needs backed memory.
    public var poisonPages: Bool
    /// Print bad-page and allocation-failure reports to standard error.
    public var printReports: Bool
    /// `vm.percpu_pagelist_high_fraction`: 0 (the default) tunes each pcp's `high` between
    /// a share of the low watermark and a share of managed/8; 8 or more fixes it at
    /// managed / fraction / CPUs (1...7 is refused, as the kernel refuses it).
    public var percpuPagelistHighFraction: Int
    /// page_owner (`page_owner=on`): every allocation records its order, flags, thread,
    /// time and call stack, every free its thread, time and stack; see
    /// ``PageAllocator/pageOwner(of:)``, ``PageAllocator/pageOwnerText()`` and
    /// ``PageAllocator/leakReport()``. Off by default; when off it costs one predictable
    /// branch per allocation and free.
    public var pageOwner: Bool
    /// debug_pagealloc (`debug_pagealloc=on`): free pages are made inaccessible
    /// (`mprotect(PROT_NONE)` of their arena bytes, pages on per-CPU lists included) and
    /// accessible again when allocated, so a use after free faults at once and a handler
    /// reports the pfn. Needs backing `.memfd` or `.anonymous`. Off by default.
    public var debugPageAlloc: Bool
    /// init_on_alloc: every allocation is zeroed, as if it asked for `.zero`. Poisoning
    /// takes precedence (as in the kernel, both init options are off while it is on).
    public var initOnAlloc: Bool
    /// init_on_free: every free zeroes its pages (an allocation then needs no zeroing, even
    /// with `.zero`). Poisoning takes precedence.
    public var initOnFree: Bool
    /// The page-state checks of CONFIG_DEBUG_VM (the kernel's `check_pages=1`; off by
    /// default, as in a production kernel): every page of a block is checked when it is
    /// freed (`free_page_is_bad()`, and `free_tail_page_prepare()`'s checks for a compound
    /// page) and when it is allocated (`check_new_pages()`).
    ///
    /// What each setting checks:
    /// - Always: the head page of every freed block (free already, a tail, quarantined,
    ///   another order, PAGE_FLAGS_CHECK_AT_FREE flags, its reference count) and every
    ///   order-0 free. A free of a block one of whose tails a call reached on its own
    ///   (freed or quarantined it through the tail's pfn, or set flags on it) is caught too:
    ///   such a call marks the block, whose free then reads every tail. So no bad free
    ///   reaches a free list in either setting.
    /// - Without `checkPages` a block no call reached through a tail is freed without its
    ///   tails being read, as the kernel does without CONFIG_DEBUG_VM: a non-compound
    ///   block's free touches the head's record only, a compound page's writes its tails
    ///   back to clean. Flags a caller set on a tail (``PageAllocator/setPageFlags(_:_:)``)
    ///   are cleared without a report, as the kernel's free clears them.
    /// - With `checkPages` every tail is read and checked on free (such a flag is reported
    ///   and the page quarantined), and every page of a block being allocated is checked.
    ///   Free pages belong to the allocator, so the allocation check can only find a
    ///   record broken by a bug. A hardware-poisoned tail is kept out of use either way.
    ///
    /// Page poisoning (``poisonPages``), ``initOnAlloc``, ``initOnFree`` and
    /// ``debugPageAlloc`` turn the checks on too, as they turn on the kernel's
    /// `check_pages_enabled`; ``pageOwner`` does not.
    public var checkPages: Bool
    /// `vm.min_free_kbytes`. nil (the default) computes it as the kernel does at boot
    /// (`calculate_min_free_kbytes()`: int_sqrt(lowmem kB * 16), clamped to
    /// [128, 262144]). A running kernel's value is usually larger: with transparent huge
    /// pages enabled, khugepaged raises it to 11 pageblocks per zone up to Normal.
    public var minFreeKbytes: Int? = nil
    /// `vm.watermark_scale_factor`, in 1/10000 of a zone's managed pages (1...3000): the
    /// least gap between the min, low, high and promo watermarks. 10 by default.
    public var watermarkScaleFactor: Int = 10
    /// `vm.lowmem_reserve_ratio`, one entry per zone kind (DMA, DMA32, Normal, Movable,
    /// Device): zone i keeps `managed pages of zones i+1...j / ratio[i]` pages from a request
    /// whose highest zone is j; 0 keeps none.
    public var lowmemReserveRatio: [Int] = ZoneKind.defaultLowmemReserveRatio
    /// PCPF_FREE_HIGH_BATCH on every pcp: a burst of order 1...3 frees is drained at once
    /// only when the pcp holds at least a batch of pages. The kernel sets it when the CPU's
    /// share of its last-level cache is more than three batches (`zone_pcp_update_cacheinfo()`):
    /// true on practically every x86-64 machine (16 MiB a CPU on the machine the fixtures
    /// come from, against 189 pages = 756 KiB for batch 63), hence the default.
    public var pcpFreeHighBatch: Bool = true

    public init(
      zones: [ZoneConfiguration], cpuCount: Int = 2, backing: Backing = .memfd,
      sectionPages: Int = 1 << 15, holes: [Range<PFN>] = [], trapOnBadPage: Bool = false,
      poisonPages: Bool = false, printReports: Bool = false, percpuPagelistHighFraction: Int = 0,
      pageOwner: Bool = false, debugPageAlloc: Bool = false, initOnAlloc: Bool = false, initOnFree: Bool = false,
      checkPages: Bool = false
    ) {
      self.zones = zones
      self.cpuCount = cpuCount
      self.backing = backing
      self.sectionPages = sectionPages
      self.holes = holes
      self.trapOnBadPage = trapOnBadPage
      self.poisonPages = poisonPages
      self.printReports = printReports
      self.percpuPagelistHighFraction = percpuPagelistHighFraction
      self.pageOwner = pageOwner
      self.debugPageAlloc = debugPageAlloc
      self.initOnAlloc = initOnAlloc
      self.initOnFree = initOnFree
      self.checkPages = checkPages
    }

    /// A single Normal zone of `pages` pages starting at pfn 0.
    public static func normal(pages: Int, cpuCount: Int = 2, backing: Backing = .memfd)
      -> Configuration
    {
      Configuration(
        zones: [ZoneConfiguration(kind: .normal, pfns: PFN(0)..<PFN(pages))], cpuCount: cpuCount,
        backing: backing)
    }
  }
}

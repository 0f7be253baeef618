/// One zone of the single node: its kind and the pfns it spans.
public struct ZoneConfiguration: Sendable, Hashable {
  public var kind: ZoneKind
  public var pfns: Range<PFN>

  public init(kind: ZoneKind, pfns: Range<PFN>) {
    self.kind = kind
    self.pfns = pfns
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
  case emptyZone(ZoneKind)
  case duplicateZone(ZoneKind)
  case zonesOverlapOrOutOfOrder(ZoneKind, ZoneKind)
  case badSectionSize(Int)
  case badCPUCount(Int)
  case pfnTooLarge(PFN)
  case negativePFN(PFN)
  case holeNotSectionAligned(Range<PFN>)
  case mapFailed(String, errno: Int32)
  /// ``PageAllocator/Configuration/debugPageAlloc`` with backing `.none`: there is no memory
  /// to protect.
  case debugPageAllocNeedsMemory

  public var description: String {
    switch self {
    case .noZones: "configuration has no zones"
    case .emptyZone(let k): "zone \(k) spans no pages"
    case .duplicateZone(let k): "zone \(k) is given twice"
    case .zonesOverlapOrOutOfOrder(let a, let b):
      "zones \(a) and \(b) overlap or are not in ascending pfn order"
    case .badSectionSize(let n):
      "sectionPages \(n) must be a power of two from 1024 (2^10) to 2^24 pages"
    case .badCPUCount(let n): "cpuCount \(n) must be 1...1024"
    case .pfnTooLarge(let p): "pfn \(p) is beyond the supported 2^32-2"
    case .negativePFN(let p): "pfn \(p) is negative"
    case .holeNotSectionAligned(let r): "hole \(r.lowerBound)..<\(r.upperBound) is not section aligned"
    case .mapFailed(let what, let e): "\(what) failed: errno \(e)"
    case .debugPageAllocNeedsMemory: "debugPageAlloc needs backed memory (.memfd or .anonymous), not .none"
    }
  }
}

extension PageAllocator {
  /// How to build an allocator: the node's zones, CPUs, memory backing and memmap geometry.
  public struct Configuration: Sendable {
    /// The zones, in ascending pfn order and kind (DMA, DMA32, Normal, Movable).
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
    /// `vm.percpu_pagelist_high_fraction` (0: auto-tuned high, the default).
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

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
    /// PCPF_FREE_HIGH_BATCH on every pcp: a burst of order 1...3 frees is drained at once
    /// only when the pcp holds at least a batch of pages. The kernel sets it when the CPU's
    /// share of its last-level cache is more than three batches (`zone_pcp_update_cacheinfo()`):
    /// true on practically every x86-64 machine (16 MiB a CPU on the machine the fixtures
    /// come from, against 189 pages = 756 KiB for batch 63), hence the default.
    public var pcpFreeHighBatch: Bool = true

    public init(
      zones: [ZoneConfiguration], cpuCount: Int = 2, backing: Backing = .memfd,
      sectionPages: Int = 1 << 15, holes: [Range<PFN>] = [], trapOnBadPage: Bool = false,
      poisonPages: Bool = false, printReports: Bool = false, percpuPagelistHighFraction: Int = 0
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

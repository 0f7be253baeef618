/// The kernel's `enum migratetype`: what a pageblock holds, which free list a block sits on.
public enum MigrateType: Int, CaseIterable, Sendable, CustomStringConvertible {
  case unmovable = 0
  case movable = 1
  case reclaimable = 2
  /// `MIGRATE_HIGHATOMIC` (= `MIGRATE_PCPTYPES`).
  case highAtomic = 3
  case cma = 4
  case isolate = 5

  /// `MIGRATE_PCPTYPES`: the types with per-CPU lists.
  public static let pcpTypes = 3
  /// `MIGRATE_TYPES`.
  public static let count = 6

  /// The name the kernel prints in /proc/pagetypeinfo.
  public var description: String {
    switch self {
    case .unmovable: "Unmovable"
    case .movable: "Movable"
    case .reclaimable: "Reclaimable"
    case .highAtomic: "HighAtomic"
    case .cma: "CMA"
    case .isolate: "Isolate"
    }
  }

  /// `migratetype_is_mergeable()`: only the pcp types merge across pageblocks.
  @inlinable public var isMergeable: Bool { rawValue < MigrateType.pcpTypes }

  /// The kernel's fallback table (`fallbacks[]`): where an allocation of this type may steal.
  public var fallbacks: [MigrateType] {
    switch self {
    case .unmovable: [.reclaimable, .movable]
    case .movable: [.reclaimable, .unmovable]
    case .reclaimable: [.unmovable, .movable]
    default: []
    }
  }
}

/// The zone types of `enum zone_type` on x86-64 (no HighMem there) with ZONE_DEVICE, as
/// distribution kernels build it: MAX_NR_ZONES is 5.
public enum ZoneKind: Int, CaseIterable, Sendable, Comparable, CustomStringConvertible {
  case dma = 0
  case dma32 = 1
  case normal = 2
  case movable = 3
  /// ZONE_DEVICE: device memory (pmem, GPU memory) with struct pages, never managed by
  /// the buddy allocator. Always empty here, and printed as the kernel prints it.
  case device = 4

  public static func < (a: ZoneKind, b: ZoneKind) -> Bool { a.rawValue < b.rawValue }

  /// MAX_NR_ZONES: how many kinds there are (`allCases.count`, as a constant).
  public static let count = 5

  /// The name the kernel prints ("DMA", "DMA32", "Normal", "Movable", "Device").
  public var description: String {
    switch self {
    case .dma: "DMA"
    case .dma32: "DMA32"
    case .normal: "Normal"
    case .movable: "Movable"
    case .device: "Device"
    }
  }

  /// `sysctl_lowmem_reserve_ratio`'s defaults, by kind: 256, 256, 32, 0, 0.
  public static let defaultLowmemReserveRatio = [256, 256, 32, 0, 0]
}

/// Get-free-page flags: the kernel's `gfp_t`, with the bits PageAlloc models.
///
/// The composite masks have the kernel's meaning: ``kernel`` may "sleep" (here: it uses the
/// low watermark and then the min watermark, since no reclaim exists), ``atomic`` may dip
/// into the reserves below min (`__GFP_HIGH`), ``nowait`` may not. The migratetype comes
/// from ``movable`` / ``reclaimable``; the highest usable zone from ``dma``, ``dma32`` and
/// ``highmem`` + ``movable``.
@frozen
public struct GFP: OptionSet, Hashable, Sendable, CustomStringConvertible {
  public var rawValue: UInt32
  @inlinable public init(rawValue: UInt32) { self.rawValue = rawValue }

  // The bit values follow include/linux/gfp_types.h's order (not its numbers).
  /// `__GFP_DMA`
  public static let dma = GFP(rawValue: 1 << 0)
  /// `__GFP_HIGHMEM`
  public static let highmem = GFP(rawValue: 1 << 1)
  /// `__GFP_DMA32`
  public static let dma32 = GFP(rawValue: 1 << 2)
  /// `__GFP_MOVABLE`: the migratetype is Movable (and with ``highmem``, ZONE_MOVABLE may serve).
  public static let movable = GFP(rawValue: 1 << 3)
  /// `__GFP_RECLAIMABLE`
  public static let reclaimable = GFP(rawValue: 1 << 4)
  /// `__GFP_HIGH`: may use part of the min reserve (ALLOC_MIN_RESERVE).
  public static let high = GFP(rawValue: 1 << 5)
  /// `__GFP_IO`
  public static let io = GFP(rawValue: 1 << 6)
  /// `__GFP_FS`
  public static let fs = GFP(rawValue: 1 << 7)
  /// `__GFP_ZERO`: the pages are zeroed (when memory is backed).
  public static let zero = GFP(rawValue: 1 << 8)
  /// `__GFP_DIRECT_RECLAIM`
  public static let directReclaim = GFP(rawValue: 1 << 10)
  /// `__GFP_KSWAPD_RECLAIM`
  public static let kswapdReclaim = GFP(rawValue: 1 << 11)
  /// `__GFP_NOWARN`: no warn_alloc report on failure.
  public static let noWarn = GFP(rawValue: 1 << 13)
  /// `__GFP_RETRY_MAYFAIL`: accepted; with no reclaim or compaction there is nothing to
  /// retry, so a request fails as soon as the free lists cannot serve it.
  public static let retryMayFail = GFP(rawValue: 1 << 14)
  /// `__GFP_NOFAIL` (accepted; there is no reclaim to retry, so it cannot be honoured).
  public static let noFail = GFP(rawValue: 1 << 15)
  /// `__GFP_NORETRY`: accepted (every request is "no retry" here).
  public static let noRetry = GFP(rawValue: 1 << 16)
  /// `__GFP_COMP`: an order > 0 allocation is a compound page.
  public static let comp = GFP(rawValue: 1 << 18)
  /// `__GFP_HARDWALL`
  public static let hardwall = GFP(rawValue: 1 << 20)
  /// `__GFP_ACCOUNT`
  public static let account = GFP(rawValue: 1 << 22)

  /// `__GFP_RECLAIM`
  public static let reclaim: GFP = [.directReclaim, .kswapdReclaim]
  /// `GFP_KERNEL`
  public static let kernel: GFP = [.reclaim, .io, .fs]
  /// `GFP_ATOMIC`
  public static let atomic: GFP = [.high, .kswapdReclaim]
  /// `GFP_NOWAIT`
  public static let nowait: GFP = [.kswapdReclaim]
  /// `GFP_USER`
  public static let user: GFP = [.reclaim, .io, .fs, .hardwall]
  /// `GFP_HIGHUSER_MOVABLE`
  public static let highUserMovable: GFP = [.user, .highmem, .movable]
  /// `GFP_KERNEL_ACCOUNT`
  public static let kernelAccount: GFP = [.kernel, .account]

  /// `gfp_migratetype()`.
  @inlinable public var migrateType: MigrateType {
    if contains(.movable) { return .movable }
    if contains(.reclaimable) { return .reclaimable }
    return .unmovable
  }

  /// `gfp_zone()`: the highest zone this request may use.
  @inlinable public var highestZone: ZoneKind {
    if contains(.dma) { return .dma }
    if contains(.dma32) { return .dma32 }
    if contains(.highmem) && contains(.movable) { return .movable }
    return .normal
  }

  /// The names `%pGg` prints, in the kernel's table order: the composite masks first (each
  /// consumes its bits), then the single bits.
  package static let nameTable: [(name: String, mask: GFP)] = [
    ("GFP_HIGHUSER_MOVABLE", .highUserMovable), ("GFP_KERNEL_ACCOUNT", .kernelAccount),
    ("GFP_USER", .user), ("GFP_KERNEL", .kernel), ("GFP_ATOMIC", .atomic), ("GFP_NOWAIT", .nowait),
    ("__GFP_DMA", .dma), ("__GFP_HIGHMEM", .highmem), ("__GFP_DMA32", .dma32),
    ("__GFP_MOVABLE", .movable), ("__GFP_RECLAIMABLE", .reclaimable), ("__GFP_HIGH", .high),
    ("__GFP_IO", .io), ("__GFP_FS", .fs), ("__GFP_ZERO", .zero),
    ("__GFP_DIRECT_RECLAIM", .directReclaim), ("__GFP_KSWAPD_RECLAIM", .kswapdReclaim),
    ("__GFP_NOWARN", .noWarn), ("__GFP_RETRY_MAYFAIL", .retryMayFail), ("__GFP_NOFAIL", .noFail),
    ("__GFP_NORETRY", .noRetry), ("__GFP_COMP", .comp), ("__GFP_HARDWALL", .hardwall),
    ("__GFP_ACCOUNT", .account),
  ]

  /// The kernel's symbolic printing (`show_gfp_flags`), e.g. `GFP_KERNEL|__GFP_ZERO`.
  public var description: String {
    var rest = self
    var parts: [String] = []
    for (name, mask) in GFP.nameTable where !mask.isEmpty && rest.isSuperset(of: mask) {
      parts.append(name)
      rest.subtract(mask)
    }
    return parts.isEmpty ? "0" : parts.joined(separator: "|")
  }
}

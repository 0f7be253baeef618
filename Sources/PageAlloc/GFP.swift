/// Get-free-page flags: the kernel's `gfp_t`, bit for bit.
///
/// Every flag of include/linux/gfp_types.h has the kernel's bit number on x86-64 without
/// LOCKDEP and without hardware-tag KASAN (the usual distribution configuration): `rawValue`
/// is the mask a trace prints in hex. The flags that configuration leaves at 0
/// (``skipZero``, ``skipKasan``, ``noLockdep``) are empty here too.
///
/// The composite masks have the kernel's meaning: ``kernel`` may "sleep" (here: it uses the
/// low watermark and then the min watermark, since no reclaim exists), ``atomic`` may dip
/// into the reserves below min (`__GFP_HIGH`), ``nowait`` may not and does not warn. The
/// migratetype comes from ``movable`` / ``reclaimable``; the highest usable zone from
/// ``dma``, ``dma32`` and ``highmem`` + ``movable``.
///
/// ``description`` prints a mask as trace events do (`show_gfp_flags()`), and
/// ``init(parsing:)`` reads such a text (or a hex mask) back.
@frozen
public struct GFP: OptionSet, Hashable, Sendable, CustomStringConvertible {
  public var rawValue: UInt32
  @inlinable public init(rawValue: UInt32) { self.rawValue = rawValue }

  // The single flags, in gfp_types.h's order, at its bit numbers. Bit 9 is unused (it was
  // __GFP_ATOMIC).
  /// `__GFP_DMA` (bit 0): ZONE_DMA only.
  public static let dma = GFP(rawValue: 1 << 0)
  /// `__GFP_HIGHMEM` (bit 1)
  public static let highmem = GFP(rawValue: 1 << 1)
  /// `__GFP_DMA32` (bit 2): ZONE_DMA32 and below.
  public static let dma32 = GFP(rawValue: 1 << 2)
  /// `__GFP_MOVABLE` (bit 3): the migratetype is Movable (and with ``highmem``, ZONE_MOVABLE may serve).
  public static let movable = GFP(rawValue: 1 << 3)
  /// `__GFP_RECLAIMABLE` (bit 4)
  public static let reclaimable = GFP(rawValue: 1 << 4)
  /// `__GFP_HIGH` (bit 5): may use part of the min reserve (ALLOC_MIN_RESERVE).
  public static let high = GFP(rawValue: 1 << 5)
  /// `__GFP_IO` (bit 6)
  public static let io = GFP(rawValue: 1 << 6)
  /// `__GFP_FS` (bit 7)
  public static let fs = GFP(rawValue: 1 << 7)
  /// `__GFP_ZERO` (bit 8): the pages are zeroed (when memory is backed).
  public static let zero = GFP(rawValue: 1 << 8)
  /// `__GFP_DIRECT_RECLAIM` (bit 10)
  public static let directReclaim = GFP(rawValue: 1 << 10)
  /// `__GFP_KSWAPD_RECLAIM` (bit 11)
  public static let kswapdReclaim = GFP(rawValue: 1 << 11)
  /// `__GFP_WRITE` (bit 12): a page cache page about to be dirtied (the kernel spreads
  /// these over nodes by their dirty limits; one node here, so it changes nothing).
  public static let write = GFP(rawValue: 1 << 12)
  /// `__GFP_NOWARN` (bit 13): no warn_alloc report on failure.
  public static let noWarn = GFP(rawValue: 1 << 13)
  /// `__GFP_RETRY_MAYFAIL` (bit 14): accepted; with no reclaim or compaction there is
  /// nothing to retry, so a request fails as soon as the free lists cannot serve it.
  public static let retryMayFail = GFP(rawValue: 1 << 14)
  /// `__GFP_NOFAIL` (bit 15): accepted; there is no reclaim to retry, so it cannot be honoured.
  public static let noFail = GFP(rawValue: 1 << 15)
  /// `__GFP_NORETRY` (bit 16): accepted (every request is "no retry" here).
  public static let noRetry = GFP(rawValue: 1 << 16)
  /// `__GFP_MEMALLOC` (bit 17): when the watermarks refuse, the slow path tries once more
  /// ignoring them (ALLOC_NO_WATERMARKS), unless ``noMemalloc`` is set too.
  public static let memalloc = GFP(rawValue: 1 << 17)
  /// `__GFP_COMP` (bit 18): an order > 0 allocation is a compound page.
  public static let comp = GFP(rawValue: 1 << 18)
  /// `__GFP_NOMEMALLOC` (bit 19): never use the emergency reserves, overriding ``memalloc``.
  public static let noMemalloc = GFP(rawValue: 1 << 19)
  /// `__GFP_HARDWALL` (bit 20): cpuset hardwall (one node, no cpusets: no effect).
  public static let hardwall = GFP(rawValue: 1 << 20)
  /// `__GFP_THISNODE` (bit 21): this node only (there is one node).
  public static let thisNode = GFP(rawValue: 1 << 21)
  /// `__GFP_ACCOUNT` (bit 22): charged to the memory cgroup (not modelled).
  public static let account = GFP(rawValue: 1 << 22)
  /// `__GFP_ZEROTAGS` (bit 23): zero the memory tags (arm64 MTE; no effect here).
  public static let zeroTags = GFP(rawValue: 1 << 23)
  /// `__GFP_NO_OBJ_EXT` (bit 24 without LOCKDEP): no slab object extension vector.
  public static let noObjExt = GFP(rawValue: 1 << 24)
  /// `__GFP_SKIP_ZERO`: 0 without CONFIG_KASAN_HW_TAGS, as here.
  public static let skipZero = GFP([])
  /// `__GFP_SKIP_KASAN`: 0 without CONFIG_KASAN_HW_TAGS, as here.
  public static let skipKasan = GFP([])
  /// `__GFP_NOLOCKDEP`: 0 without CONFIG_LOCKDEP, as here (with LOCKDEP it takes bit 24
  /// and ``noObjExt`` moves to bit 25).
  public static let noLockdep = GFP([])

  // The composites of gfp_types.h.
  /// `__GFP_RECLAIM`
  public static let reclaim: GFP = [.directReclaim, .kswapdReclaim]
  /// `GFP_ATOMIC`
  public static let atomic: GFP = [.high, .kswapdReclaim]
  /// `GFP_KERNEL`
  public static let kernel: GFP = [.reclaim, .io, .fs]
  /// `GFP_KERNEL_ACCOUNT`
  public static let kernelAccount: GFP = [.kernel, .account]
  /// `GFP_NOWAIT`: wake kswapd, never warn.
  public static let nowait: GFP = [.kswapdReclaim, .noWarn]
  /// `GFP_NOIO`
  public static let noio: GFP = [.reclaim]
  /// `GFP_NOFS`
  public static let nofs: GFP = [.reclaim, .io]
  /// `GFP_USER`
  public static let user: GFP = [.reclaim, .io, .fs, .hardwall]
  /// `GFP_HIGHUSER`
  public static let highUser: GFP = [.user, .highmem]
  /// `GFP_HIGHUSER_MOVABLE`
  public static let highUserMovable: GFP = [.highUser, .movable, .skipKasan]
  /// `GFP_TRANSHUGE_LIGHT`: a THP that must not reclaim.
  public static let transhugeLight: GFP = GFP([.highUserMovable, .comp, .noMemalloc, .noWarn]).subtracting(.reclaim)
  /// `GFP_TRANSHUGE`
  public static let transhuge: GFP = [.transhugeLight, .directReclaim]

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

  /// The names `show_gfp_flags()` prints, in its table's order (`__def_gfpflag_names` of
  /// include/trace/events/mmflags.h): the composites first, then the single flags in bit
  /// order. The first entry whose bits are all still present wins and takes its bits, so
  /// `__GFP_RECLAIM` never prints (GFP_NOIO is the same mask and comes first), a lone
  /// DMA32 bit prints `GFP_DMA32`, and GFP_KERNEL plus __GFP_HARDWALL prints `GFP_USER`.
  ///
  /// Bit 24 prints as `__GFP_NO_OBJ_EXT`, as the 6.18 kernels whose traces PageAlloc is
  /// measured against print it; the 2026 tree dropped that entry and prints `0x1000000`.
  /// Page allocations never carry the flag, so the two agree on every real trace seen.
  static let names: [(name: String, mask: GFP)] = [
    ("GFP_TRANSHUGE", .transhuge), ("GFP_TRANSHUGE_LIGHT", .transhugeLight),
    ("GFP_HIGHUSER_MOVABLE", .highUserMovable), ("GFP_HIGHUSER", .highUser), ("GFP_USER", .user),
    ("GFP_KERNEL_ACCOUNT", .kernelAccount), ("GFP_KERNEL", .kernel), ("GFP_NOFS", .nofs), ("GFP_ATOMIC", .atomic),
    ("GFP_NOIO", .noio), ("GFP_NOWAIT", .nowait), ("GFP_DMA", .dma), ("GFP_DMA32", .dma32),
    ("__GFP_RECLAIM", .reclaim),
    ("__GFP_DMA", .dma), ("__GFP_HIGHMEM", .highmem), ("__GFP_DMA32", .dma32), ("__GFP_MOVABLE", .movable),
    ("__GFP_RECLAIMABLE", .reclaimable), ("__GFP_HIGH", .high), ("__GFP_IO", .io), ("__GFP_FS", .fs),
    ("__GFP_ZERO", .zero), ("__GFP_DIRECT_RECLAIM", .directReclaim), ("__GFP_KSWAPD_RECLAIM", .kswapdReclaim),
    ("__GFP_WRITE", .write), ("__GFP_NOWARN", .noWarn), ("__GFP_RETRY_MAYFAIL", .retryMayFail),
    ("__GFP_NOFAIL", .noFail), ("__GFP_NORETRY", .noRetry), ("__GFP_MEMALLOC", .memalloc), ("__GFP_COMP", .comp),
    ("__GFP_NOMEMALLOC", .noMemalloc), ("__GFP_HARDWALL", .hardwall), ("__GFP_THISNODE", .thisNode),
    ("__GFP_ACCOUNT", .account), ("__GFP_ZEROTAGS", .zeroTags), ("__GFP_NO_OBJ_EXT", .noObjExt),
  ]

  /// The kernel's printing of the mask in trace events (`show_gfp_flags()` through
  /// `trace_print_flags_seq()`), e.g. `GFP_KERNEL|__GFP_ZERO`: the names of the table
  /// above joined by `|`, any bits no name covers as one `0x…` hex number at the end, and
  /// `none` for an empty mask.
  public var description: String {
    if rawValue == 0 { return "none" }
    var rest = rawValue
    var out = ""
    for entry in GFP.names where rest != 0 && rest & entry.mask.rawValue == entry.mask.rawValue {
      if !out.isEmpty { out += "|" }
      out += entry.name
      rest &= ~entry.mask.rawValue
    }
    if rest != 0 {
      if !out.isEmpty { out += "|" }
      out += "0x" + String(rest, radix: 16)
    }
    return out
  }

  /// Reads a `gfp_flags=` value of a kernel trace: the symbolic form ``description``
  /// prints (`GFP_KERNEL|__GFP_ZERO`, names of the table in any order, at most one `0x…`
  /// leftover each time it appears), a hex mask (`0x152c4a`, as raw or hex trace output
  /// prints it), or `none`. Returns nil for an empty text or part, a name the table does
  /// not have (such as `__GFP_NOLOCKDEP`, which only LOCKDEP kernels print), or a number
  /// that is not hex digits after `0x` or does not fit 32 bits.
  public init?(parsing text: String) {
    if text == "none" {
      self.init()
      return
    }
    var mask: UInt32 = 0
    for part in text.split(separator: "|", omittingEmptySubsequences: false) {
      if part.hasPrefix("0x") {
        let digits = part.dropFirst(2)
        guard !digits.isEmpty, digits.allSatisfy(\.isHexDigit), let v = UInt32(digits, radix: 16) else { return nil }
        mask |= v
      } else if let entry = GFP.names.first(where: { $0.name == part }) {
        mask |= entry.mask.rawValue
      } else {
        return nil
      }
    }
    self.init(rawValue: mask)
  }
}

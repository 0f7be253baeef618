import Testing

@testable import PageAlloc

/// GFP bits, composites and the kernel's printing (`show_gfp_flags()`), both ways.
@Suite struct GFPTests {
  /// Every single flag at its gfp_types.h bit (x86-64, no LOCKDEP, no KASAN_HW_TAGS).
  @Test func bitsAreTheKernels() {
    let bits: [(GFP, Int)] = [
      (.dma, 0), (.highmem, 1), (.dma32, 2), (.movable, 3), (.reclaimable, 4), (.high, 5), (.io, 6), (.fs, 7),
      (.zero, 8), (.directReclaim, 10), (.kswapdReclaim, 11), (.write, 12), (.noWarn, 13), (.retryMayFail, 14),
      (.noFail, 15), (.noRetry, 16), (.memalloc, 17), (.comp, 18), (.noMemalloc, 19), (.hardwall, 20),
      (.thisNode, 21), (.account, 22), (.zeroTags, 23), (.noObjExt, 24),
    ]
    for (flag, bit) in bits { #expect(flag.rawValue == 1 << bit, "\(flag) is not bit \(bit)") }
    // Flags that are 0 on this configuration, as in the kernel's enum.
    #expect(GFP.skipZero.isEmpty && GFP.skipKasan.isEmpty && GFP.noLockdep.isEmpty)
  }

  @Test func compositesAreTheKernels() {
    let composites: [(GFP, UInt32)] = [
      (.reclaim, 0xc00), (.atomic, 0x820), (.kernel, 0xcc0), (.kernelAccount, 0x400cc0), (.nowait, 0x2800),
      (.noio, 0xc00), (.nofs, 0xc40), (.user, 0x100cc0), (.highUser, 0x100cc2), (.highUserMovable, 0x100cca),
      (.transhugeLight, 0x1c20ca), (.transhuge, 0x1c24ca),
    ]
    for (mask, value) in composites { #expect(mask.rawValue == value, "\(mask) is not 0x\(String(value, radix: 16))") }
    // GFP_NOWAIT carries __GFP_NOWARN: its failures are not reported.
    #expect(GFP.nowait.contains(.noWarn))
  }

  /// The worked examples: first match of the table wins, leftovers as one hex number.
  @Test func printsLikeShowGfpFlags() {
    let cases: [(UInt32, String)] = [
      (0xcc0, "GFP_KERNEL"), (0x2800, "GFP_NOWAIT"), (0x800, "__GFP_KSWAPD_RECLAIM"), (0x820, "GFP_ATOMIC"),
      (0x2820, "GFP_ATOMIC|__GFP_NOWARN"), (0x140cca, "GFP_HIGHUSER_MOVABLE|__GFP_COMP"),
      (0x140dca, "GFP_HIGHUSER_MOVABLE|__GFP_ZERO|__GFP_COMP"), (0x1c24ca, "GFP_TRANSHUGE"),
      (0x1c20ca, "GFP_TRANSHUGE_LIGHT"), (0x3c24ca, "GFP_TRANSHUGE|__GFP_THISNODE"), (0xc40, "GFP_NOFS"),
      (0xc00, "GFP_NOIO"), (0xdc0, "GFP_KERNEL|__GFP_ZERO"), (0x100cc0, "GFP_USER"),
      (0x500cc0, "GFP_USER|__GFP_ACCOUNT"), (0x100cc2, "GFP_HIGHUSER"), (0x500cc2, "GFP_HIGHUSER|__GFP_ACCOUNT"),
      (0xcc4, "GFP_KERNEL|GFP_DMA32"), (0x4, "GFP_DMA32"), (0x824, "GFP_ATOMIC|GFP_DMA32"),
      (0x2904, "GFP_NOWAIT|GFP_DMA32|__GFP_ZERO"), (0xcc1, "GFP_KERNEL|GFP_DMA"), (0x1, "GFP_DMA"),
      (0x400, "__GFP_DIRECT_RECLAIM"), (0xec0, "GFP_KERNEL|0x200"), (0x1000cc0, "GFP_KERNEL|__GFP_NO_OBJ_EXT"),
      (0x152c4a, "GFP_NOFS|__GFP_HIGHMEM|__GFP_MOVABLE|__GFP_NOWARN|__GFP_NORETRY|__GFP_COMP|__GFP_HARDWALL"),
      (0x252800, "GFP_NOWAIT|__GFP_NORETRY|__GFP_COMP|__GFP_THISNODE"),
      (0x153cca, "GFP_HIGHUSER_MOVABLE|__GFP_WRITE|__GFP_NOWARN|__GFP_NORETRY|__GFP_COMP"),
      (0xa0000, "__GFP_MEMALLOC|__GFP_NOMEMALLOC"), (0x800000, "__GFP_ZEROTAGS"),
      (0x6000_0200, "0x60000200"), (0x8000_0cc0, "GFP_KERNEL|0x80000000"), (0, "none"),
    ]
    for (raw, text) in cases {
      #expect(GFP(rawValue: raw).description == text, "0x\(String(raw, radix: 16))")
      #expect(GFP(parsing: text) == GFP(rawValue: raw), "\(text)")
    }
  }

  @Test func parsesHexAndRejectsWhatTheKernelNeverPrints() {
    #expect(GFP(parsing: "0x152c4a") == GFP(rawValue: 0x152c4a))
    #expect(GFP(parsing: "0x0") == GFP())
    #expect(GFP(parsing: "none") == GFP())
    // Any spelling of the same bits parses; description prints the canonical one.
    #expect(GFP(parsing: "__GFP_IO|__GFP_RECLAIM")?.description == "GFP_NOFS")
    #expect(GFP(parsing: "GFP_KERNEL|__GFP_HARDWALL")?.description == "GFP_USER")
    for bad in [
      "", "|", "GFP_KERNEL|", "GFP_BOGUS", "__GFP_NOLOCKDEP", "0x", "0xg1", "12", "gfp_kernel", "0x1ffffffff",
    ] {
      #expect(GFP(parsing: bad) == nil, "\(bad)")
    }
  }

  @Test func migrateTypeAndHighestZone() {
    #expect(GFP.kernel.migrateType == .unmovable)
    #expect(GFP.highUserMovable.migrateType == .movable)
    #expect(GFP([.nofs, .reclaimable]).migrateType == .reclaimable)
    #expect(GFP.highUserMovable.highestZone == .movable)
    #expect(GFP.highUser.highestZone == .normal)
    #expect(GFP([.kernel, .dma32]).highestZone == .dma32)
    #expect(GFP([.kernel, .dma]).highestZone == .dma)
  }
}

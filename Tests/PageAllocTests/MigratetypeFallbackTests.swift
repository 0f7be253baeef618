@testable import PageAlloc
import Testing
import PageAllocTestSupport

/// The migratetype fallbacks of __rmqueue(): the kernel's table (Unmovable falls back to
/// Reclaimable then Movable, Movable to Reclaimable then Unmovable, Reclaimable to
/// Unmovable then Movable), claiming a whole pageblock when the block found is large
/// enough (or, below pageblock order, when half the pageblock is free or alike), and
/// stealing a single block otherwise. Each test shapes a 16-pageblock zone by hand: every
/// page taken, the pageblocks typed, then the chosen pages freed.
@Suite struct MigratetypeFallbackTests {
  /// 8192 pages, one CPU; `types[i]` is pageblock i's type (Movable when absent); the
  /// pages of `free` are freed and drained, everything else stays in use.
  func shaped(_ types: [Int: MigrateType], free: [Range<Int>]) throws -> PageAllocator {
    let a = try makeAllocator(pages: 8192)
    #expect(a.claimFreeRange(0, count: 8192) == .claimed)
    for (pb, t) in types { a.memMap.setMigrateType(pb * 512, t) }
    for r in free { for p in r { a.putPage(PFN(p)) } }
    a.drainAllPages()
    try a.verify()
    return a
  }

  func pageblockOf(_ p: PFN) -> Int { p.value / 512 }

  /// For each type, only the two others have free pageblocks: the claim takes the first
  /// of the type's fallbacks and makes its pageblock the requested type.
  @Test(arguments: [
    (MigrateType.unmovable, MigrateType.reclaimable, MigrateType.movable),
    (.movable, .reclaimable, .unmovable),
    (.reclaimable, .unmovable, .movable),
  ])
  func theFirstFallbackIsClaimed(request: MigrateType, first: MigrateType, second: MigrateType) throws {
    // Pageblock 2 of the first fallback type, 5 of the second, both wholly free; the rest
    // in use, typed as the requested type so that none of its free lists has a page.
    var types = [Int: MigrateType]()
    for pb in 0..<16 { types[pb] = request }
    types[2] = first
    types[5] = second
    let a = try shaped(types, free: [1024..<1536, 2560..<3072])
    #expect(request.fallbacks == [first, second])
    let gfp: GFP = request == .movable ? .highUserMovable : request == .reclaimable ? [.kernel, .reclaimable] : .kernel
    let p = try #require(a.allocPages(order: 0, gfp: gfp))
    #expect(pageblockOf(p) == 2, "\(request) took pageblock \(pageblockOf(p)), not the \(first) one")
    #expect(a.migrateType(of: p) == request)
    #expect(a.migrateType(of: PFN(2560)) == second)
    #expect(a.zoneStatistics()[0].pageblocksClaimed == 1)
    try a.verify()
  }

  /// Below pageblock order a Movable request claims an Unmovable pageblock only when half
  /// of it is free (no page in use counts as alike: there is no LRU): with 200 free pages
  /// per pageblock it steals the smallest block instead, and the pageblock stays
  /// Unmovable.
  @Test func aMovableRequestStealsWhenTooLittleIsFree() throws {
    var types = [Int: MigrateType]()
    for pb in 0..<16 { types[pb] = .unmovable }
    // 200 free pages at the start of each of pageblocks 0-7: blocks of order 7, 6 and 3.
    let free = (0..<8).map { ($0 * 512)..<($0 * 512 + 200) }
    let a = try shaped(types, free: free)
    let before = a.zoneStatistics()[0]
    #expect(before.freeBlocksByType[MigrateType.unmovable.rawValue][3] == 8)
    let p = try #require(a.allocPages(order: 0, gfp: .highUserMovable))
    // The smallest fallback block (order 3, at 192 in some pageblock) was stolen whole:
    // the refill took its 8 pages; the pageblock is still Unmovable.
    #expect(p.value % 512 >= 192 && p.value % 512 < 200)
    #expect(a.migrateType(of: p) == .unmovable)
    let after = a.zoneStatistics()[0]
    #expect(after.pageblocksClaimed == before.pageblocksClaimed)
    #expect(after.pageblocksByType == before.pageblocksByType)
    #expect(after.freeBlocksByType[MigrateType.unmovable.rawValue][3] == 7)
    #expect(after.fallbackAllocs > before.fallbackAllocs)
    try a.verify()
  }

  /// With 300 of its 512 pages free, the same Unmovable pageblock is claimed: its free
  /// blocks move to the Movable lists and the pageblock becomes Movable.
  @Test func aMovableRequestClaimsAHalfFreePageblock() throws {
    var types = [Int: MigrateType]()
    for pb in 0..<16 { types[pb] = .unmovable }
    let a = try shaped(types, free: [(3 * 512)..<(3 * 512 + 300)])
    let p = try #require(a.allocPages(order: 0, gfp: .highUserMovable))
    #expect(pageblockOf(p) == 3)
    #expect(a.migrateType(of: p) == .movable)
    let s = a.zoneStatistics()[0]
    #expect(s.pageblocksClaimed == 1)
    #expect((0..<11).allSatisfy { s.freeBlocksByType[MigrateType.unmovable.rawValue][$0] == 0 })
    try a.verify()
  }

  /// An Unmovable request claims even a mostly used Movable pageblock: its pages in use
  /// are not movable (no LRU), so they count as alike.
  @Test func anUnmovableRequestClaimsAMostlyUsedMovablePageblock() throws {
    // 200 free (enough for the min watermark), 312 in use.
    let a = try shaped([:], free: [(4 * 512)..<(4 * 512 + 200)])
    let p = try #require(a.allocPages(order: 0, gfp: .kernel))
    #expect(pageblockOf(p) == 4)
    #expect(a.migrateType(of: p) == .unmovable)
    #expect(a.zoneStatistics()[0].pageblocksClaimed == 1)
    try a.verify()
  }
}

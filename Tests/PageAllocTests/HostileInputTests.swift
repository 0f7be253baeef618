@testable import PageAlloc
import PageAllocStress
import Testing
import PageAllocTestSupport

/// Regressions found by the API-sequence fuzzer (Fuzz/APISequenceFuzz.swift).
@Suite struct HostileInputTests {
  /// fuzz crash 240a0425: a frozen free over free memory freed the pages behind a free
  /// block's head a second time (only the head was checked).
  @Test func frozenRangeOverFreeBlocksFreesNothing() throws {
    let a = try makeFuzzAllocator()
    let before = a.freeBlocks().map { "\($0.pfn)/\($0.order)" }
    a.freeContigFrozenRange(PFN(934), count: 37)
    try a.verify()
    a.drainAllPages()
    #expect(a.freeBlocks().map { "\($0.pfn)/\($0.order)" } == before)
    // One report per free block the range starts in or runs into (896/6, then 960/5).
    #expect(a.badPageCountsByKind == [.doubleFree: 2])
    #expect(a.freePageCount == a.managedPageCount)
  }
}

extension HostileInputTests {
  /// fuzz: setPageFlags on a page freed already put a flag on a free block's head.
  @Test func setPageFlagsOnFreePagesIsIgnored() throws {
    let a = try makeFuzzAllocator()
    let p = try #require(a.allocPages(order: 0, gfp: .kernel))
    a.freePages(p, order: 0)
    a.setPageFlags(p, .private)
    a.setPageFlags(PFN(2048), .locked)
    a.setPageFlags(PFN(2049), .locked)
    try a.verify()
    a.drainAllPages()
    try a.verify()
    #expect(a.pageFlags(of: p) == [])
  }
}

extension HostileInputTests {
  /// fuzz bbffbbbbffbb: DMA allocations claimed the pageblock 512..<1024 that the DMA
  /// zone (ending at 1000) shares with the Normal zone, re-typing Normal's free blocks.
  @Test func pageblockStraddlingZonesIsNeverClaimed() throws {
    let a = try makeFuzzAllocator()
    let normal = try #require(a.zoneStatistics().first { $0.kind == .normal })
    var pages: [PFN] = []
    a.allocPagesBulk(count: 255, gfp: [.kernel, .dma32], into: &pages)
    a.allocPagesBulk(count: 255, gfp: [.kernel, .dma32], into: &pages)
    #expect(pages.count == 510)
    #expect(pages.allSatisfy { a.zoneKind(of: $0) == .dma })
    // The pageblock 512..<1024 is shared with the Normal zone (1000..<1024): it keeps its
    // boot type, and Normal's free pages in it stay on Movable lists.
    #expect(a.migrateType(of: 512) == .movable)
    #expect(a.migrateType(of: 1000) == .movable)
    let normalNow = try #require(a.zoneStatistics().first { $0.kind == .normal })
    #expect(normalNow.freeBlocksByType == normal.freeBlocksByType)
    try a.verify()
    a.freePagesBulk(pages)
    a.drainAllPages()
    try a.verify()
    #expect(a.freePageCount == a.managedPageCount)
  }
}

extension HostileInputTests {
  /// fuzz d0ffc0194c840355d0: a frozen range over a frozen allocation and free blocks: the
  /// freed allocation merged with free blocks ahead, whose pages then looked frozen.
  @Test func frozenRangeMergingAheadIsContained() throws {
    let a = try makeFuzzAllocator()
    let p = try #require(a.allocContigFrozenPages(count: 256, gfp: .kernel))
    #expect(p == PFN(1024))
    a.freeContigFrozenRange(PFN(800), count: 2333)
    try a.verify()
    #expect(a.allocContigPages(count: 1, gfp: .kernel) != nil)
    try a.verify()
    a.drainAllPages()
    #expect(a.freePageCount == a.managedPageCount - 1)
  }
}

extension HostileInputTests {
  /// fuzz 28b02bb0282828: a frozen range freed the tails of an allocated block; freeing
  /// the block then salvaged the "clean" pages inside those free blocks a second time.
  @Test func blockFreeAfterHostileFrozenRangeIsContained() throws {
    let a = try makeFuzzAllocator()
    let p = try #require(a.allocPages(order: 8, gfp: [.kernel, .dma32]))
    a.freeContigFrozenRange(p + 180, count: 40)
    try a.verify()
    a.freePages(p, order: 8)
    try a.verify()
    a.drainAllPages()
    try a.verify()
    #expect(a.freePageCount + a.quarantinedPageCount == a.managedPageCount)
  }
}

extension HostileInputTests {
  /// fuzz 00691fff03020069: a hostile frozen free of a tail page, then the owner's
  /// split_page gave the free page a reference.
  @Test func splitPageSkipsFreedTails() throws {
    let a = try makeFuzzAllocator()
    let p = try #require(a.allocPages(order: 9, gfp: [.kernel, .dma32]))
    a.freeFrozenPages(p + 415, order: 0)
    a.splitPage(p, order: 9)
    try a.verify()
    #expect(a.refcount(of: p + 415) == 0)
    #expect(a.refcount(of: p + 414) == 1)
    a.freeContigRange(p, count: 512)  // the freed page is reported, not freed twice
    a.drainAllPages()
    try a.verify()
    #expect(a.freePageCount + a.quarantinedPageCount == a.managedPageCount)
  }
}

extension HostileInputTests {
  /// fuzz 005230 30f8f6 3834f8: a hostile frozen range frees the tails of an allocated
  /// order-10 block (their refcount is 0, as a frozen page's), then the owner takes a
  /// speculative reference and calls freePages: `__free_pages` frees the tail halves at
  /// once, and those halves hold the blocks the frozen range already freed. Each such free
  /// block is reported once and skipped whole; its head record is left intact (the
  /// salvage loop used to rewrite it, losing the free block's order, and then freed the
  /// block's pages a second time).
  @Test func speculativeTailFreeAfterHostileFrozenRange() throws {
    let a = try makeFuzzAllocator()
    PageAllocator.setThreadCPU(0)
    defer { PageAllocator.setThreadCPU(nil) }
    let p = try #require(a.allocPages(order: 10, gfp: .kernel))
    a.freeContigFrozenRange(p + 0xf8, count: 1368)
    #expect(a.badPageCount > 0)
    try a.verify()
    a.getPage(p)
    a.freePages(p, order: 10)
    try a.verify()
    // 0x600 (order 9), 0x500 (order 8) and 0x4f8 (order 3) were freed by the frozen range.
    #expect(a.badPageReports.suffix(3).map(\.pfn) == [p + 0x200, p + 0x100, p + 0xf8])
    a.putPage(p)
    a.drainAllPages()
    try a.verify()
    #expect(a.freePageCount + a.quarantinedPageCount == a.managedPageCount)
  }
}

extension HostileInputTests {
  /// fuzz fe525046: a hostile frozen range over a movable compound block quarantined it (its
  /// head still referenced, still registered, its order cleared), and compaction then
  /// migrated it as an order-0 page: its owner followed a page the allocator had taken out
  /// of use, and a page was lost. A bad page never moves. The fuzzer's input, replayed as
  /// the fuzz target replays it.
  @Test func aQuarantinedMovableBlockIsNotMigrated() throws {
    let bytes: [UInt8] = [
      0x65, 0x8e, 0xa8, 0x18, 0xda, 0x2b, 0xb5, 0xb5, 0x41, 0x72, 0x72, 0x61, 0x05, 0x00, 0x00, 0x4a, 0x2b,
    ]
    let a = try makeFuzzAllocator()
    PageAllocator.setThreadCPU(0)
    defer { PageAllocator.setThreadCPU(nil) }
    var d = APISequence(a)
    var ops: [APISequence.Op] = []
    bytes.withUnsafeBytes { raw in
      var r = ByteReader(raw)
      while !r.atEnd {
        let op = d.decode(&r, hostile: true)
        ops.append(op)
        d.step(op)
      }
    }
    #expect(ops.contains { if case .compact = $0 { true } else { false } })
    #expect(ops.contains { if case .allocMovable = $0 { true } else { false } })
    #expect(a.compactionStatistics().pgmigrateSuccess == 0)
    try a.verify()
    d.releaseAll()
    a.drainAllPages()
    try a.verify()
    #expect(a.freePageCount + a.quarantinedPageCount == a.managedPageCount)
  }

  /// fuzz d5c269e1: one page taken with __GFP_COMP became an order-0 compound head, which
  /// freeContigRange then refused as a compound page: the page was never freed. An order-0
  /// page is never compound (prep_new_page() makes one only for order > 0).
  @Test func oneCompoundPageIsAPlainPage() throws {
    let a = try makeFuzzAllocator()
    let p = try #require(a.allocContigPages(count: 1, gfp: [.kernel, .comp]))
    try a.allocContigRange(PFN(2048)..<PFN(2049), gfp: [.kernel, .comp])
    for q in [p, PFN(2048)] {
      #expect(a.refcount(of: q) == 1)
      a.getPage(q)
      a.freePages(q, order: 0)
      a.freeContigRange(q, count: 1)
    }
    #expect(a.badPageCount == 0)
    a.drainAllPages()
    try a.verify()
    #expect(a.freePageCount == a.managedPageCount)
  }
}

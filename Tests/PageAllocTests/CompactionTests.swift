@testable import PageAlloc
import Glibc
import Synchronization
import Testing
import PageAllocTestSupport

/// An owner that refuses (isolation or migration) and counts what it was asked.
final class RefusingOwner: MovablePageOwner, @unchecked Sendable {
  enum Mode { case refuseIsolation, failMigration, againForever, againTimes(Int) }
  let mode: Mode
  let isolations = Atomic<Int>(0)
  let migrations = Atomic<Int>(0)
  let putbacks = Atomic<Int>(0)
  let moved = Mutex<[Int: Int]>([:])

  init(_ mode: Mode) { self.mode = mode }

  func isolatePage(_ pfn: PFN, order: Int, mode m: MigrationMode) -> Bool {
    isolations.wrappingAdd(1, ordering: .relaxed)
    if case .refuseIsolation = mode { return false }
    return true
  }

  func migratePage(from source: PFN, to destination: PFN, order: Int, mode m: MigrationMode) -> MigrationResult {
    let n = migrations.wrappingAdd(1, ordering: .relaxed).newValue
    switch mode {
    case .failMigration: return .failure
    case .againForever: return .again
    case .againTimes(let k):
      if n <= k { return .again }
      moved.withLock { $0[source.value] = destination.value }
      return .success
    case .refuseIsolation: return .failure
    }
  }

  func putBackPage(_ pfn: PFN, order: Int) { putbacks.wrappingAdd(1, ordering: .relaxed) }
}

@Suite struct CompactionTests {
  func memfdAllocator(pages: Int = 1 << 14, cpus: Int = 1) throws -> PageAllocator {
    try PageAllocator(configuration: .normal(pages: pages, cpuCount: cpus, backing: .memfd))
  }

  func freeOrder9Blocks(_ a: PageAllocator) -> Int {
    a.drainAllPages()
    return a.freeBlocks().filter { $0.order >= 9 }.reduce(0) { $0 + (1 << ($1.order - 9)) }
  }

  // MARK: Fragmentation indexes

  @Test func extfragIndexMatchesTheKernelsFormula() {
    // 100 free order-0 pages and nothing else, order 2: 1000 - (1000 + 25000) / 100.
    var n = [Int](repeating: 0, count: 11)
    n[0] = 100
    #expect(PageAllocator.extfragIndex(freeBlocks: n, order: 2) == 740)
    #expect(PageAllocator.unusableFreeIndex(freeBlocks: n, order: 2) == 1000)
    #expect(PageAllocator.unusableFreeIndex(freeBlocks: n, order: 0) == 0)
    #expect(PageAllocator.extfragPercent(freeBlocks: n, order: 9) == 100)
    // A block of the order exists: the index does not apply.
    n[3] = 1
    #expect(PageAllocator.extfragIndex(freeBlocks: n, order: 2) == -1000)
    // 108 pages free, 8 of them usable at order 2 (two blocks of 4 inside the order-3).
    #expect(PageAllocator.unusableFreeIndex(freeBlocks: n, order: 2) == 100 * 1000 / 108)
    // Nothing free.
    let none = [Int](repeating: 0, count: 11)
    #expect(PageAllocator.extfragIndex(freeBlocks: none, order: 9) == 0)
    #expect(PageAllocator.unusableFreeIndex(freeBlocks: none, order: 9) == 1000)
    #expect(PageAllocator.extfragPercent(freeBlocks: none, order: 9) == 0)
  }

  // MARK: Registration

  @Test func registrationRulesAndItsEndAtFree() throws {
    let a = try makeAllocator(cpus: 1)
    let owner = RefusingOwner(.refuseIsolation)
    // Needs .movable; order > 0 is compound.
    #expect(a.allocPages(order: 0, gfp: .kernel, owner: owner) == nil)
    let p = try #require(a.allocPages(order: 2, gfp: .highUserMovable, owner: owner))
    #expect(a.isMovable(p))
    #expect(a.refcount(of: p) == 1)
    #expect(a.refcount(of: p + 1) == 0)
    #expect(a.movableBlockCount == 1)
    // A non-compound block, a tail, a free page, a second registration: refused.
    let q = try #require(a.allocPages(order: 1, gfp: .highUserMovable))
    #expect(!a.setMovable(q, order: 1, owner: owner))
    #expect(!a.setMovable(p + 1, order: 0, owner: owner))
    #expect(!a.setMovable(p, order: 2, owner: owner))
    #expect(!a.setMovable(PFN(60000), order: 0, owner: owner))
    a.freePages(q, order: 1)
    // The free ends the registration.
    a.freePages(p, order: 2)
    #expect(!a.isMovable(p))
    #expect(a.movableBlockCount == 0)
    // clearMovable: the page stays allocated and ordinary.
    let r = try #require(a.allocPages(order: 0, gfp: .highUserMovable, owner: owner))
    #expect(a.clearMovable(r))
    #expect(!a.isMovable(r))
    #expect(!a.clearMovable(r))
    #expect(a.movableBlockCount == 0)
    a.freePages(r, order: 0)
    a.drainAllPages()
    try a.verify()
    #expect(a.freePageCount == a.managedPageCount)
    #expect(a.badPageCount == 0)
  }

  // MARK: compact_zone over the fragment workload

  @Test func fragmentYieldsOrder9BlocksWithBytesAndOwnersIntact() throws {
    let a = try memfdAllocator()
    let table = MovablePageTable(allocator: a)
    let (movable, unmovable) = fragmentWithMovableOwners(a, table)
    #expect(movable.count > 500)
    #expect(freeOrder9Blocks(a) == 0)
    let before = Dictionary(uniqueKeysWithValues: movable.map { ($0, table.pfn(of: $0)!) })
    let r = a.compactZone(order: 9)
    #expect(r == .success)
    #expect(freeOrder9Blocks(a) >= 1)
    let stats = a.compactionStatistics()
    #expect(stats.pgmigrateSuccess > 0)
    #expect(stats.pgmigrateSuccess == table.migrationCount)
    #expect(stats.compactIsolated >= stats.pgmigrateSuccess)
    // Every owner followed its page; every page kept its bytes.
    var moved = 0
    var pfns = Set<PFN>()
    for h in movable {
      let now = try #require(table.pfn(of: h))
      #expect(pfns.insert(now).inserted)
      #expect(a.isMovable(now) && a.refcount(of: now) == 1)
      #expect(checkPattern(a, table, h))
      if now != before[h] { moved += 1 }
    }
    #expect(moved == stats.pgmigrateSuccess)
    // Unmovable pages stayed where they were, bytes and all.
    for p in unmovable {
      #expect(a.refcount(of: p) == 1)
      #expect(a.address(of: p)!.load(as: UInt64.self) == patternWord(-1 - p.value))
      #expect(!pfns.contains(p))
    }
    try a.verify()
    // compactAll recovers every movable pageblock: only pageblocks holding unmovable pages
    // keep pages in use.
    a.compactAll()
    for h in movable { #expect(checkPattern(a, table, h)) }
    let busyBlocks = Set(unmovable.map { $0.value >> 9 })
    let movableBlocks = Set(movable.map { table.pfn(of: $0)!.value >> 9 })
    #expect(movableBlocks.count * 512 >= movable.count)
    #expect(movableBlocks.count <= movable.count / 512 + 2 + busyBlocks.count)
    for h in movable { table.free(h) }
    for p in unmovable { a.freePages(p, order: 0) }
    a.drainAllPages()
    try a.verify()
    #expect(a.freePageCount == a.managedPageCount)
    #expect(a.movableBlockCount == 0)
    #expect(a.badPageCount == 0)
  }

  @Test func refusingOwnersKeepTheirPages() throws {
    for mode in [RefusingOwner.Mode.refuseIsolation, .failMigration, .againForever] {
      let a = try memfdAllocator()
      let owner = RefusingOwner(mode)
      // One refusing page in every pageblock's worth of free memory.
      var held: [PFN] = []
      var fill: [PFN] = []
      while let p = a.allocPages(order: 0, gfp: [.highUserMovable, .noWarn]) {
        if p.value % 64 == 5 {
          a.freePages(p, order: 0);
          held.append(try #require(a.allocPages(order: 0, gfp: .highUserMovable, owner: owner)))
        } else {
          fill.append(p)
        }
        if fill.count + held.count > 14000 { break }
      }
      for p in fill { a.freePages(p, order: 0) }
      a.drainAllPages()
      for p in held { a.address(of: p)!.storeBytes(of: UInt64(p.value), as: UInt64.self) }
      a.compactAll()
      for p in held {
        #expect(a.isMovable(p) && a.refcount(of: p) == 1)
        #expect(a.address(of: p)!.load(as: UInt64.self) == UInt64(p.value))
      }
      let s = a.compactionStatistics()
      #expect(s.pgmigrateSuccess == 0)
      switch mode {
      case .refuseIsolation:
        #expect(owner.isolations.load(ordering: .relaxed) > 0)
        #expect(owner.migrations.load(ordering: .relaxed) == 0)
      case .failMigration:
        #expect(s.pgmigrateFail > 0)
        #expect(owner.putbacks.load(ordering: .relaxed) == owner.isolations.load(ordering: .relaxed))
      default:
        // SYNC: 3 asynchronous passes, then 7 in the real mode, for every page.
        #expect(owner.migrations.load(ordering: .relaxed) == 10 * owner.isolations.load(ordering: .relaxed))
        #expect(owner.putbacks.load(ordering: .relaxed) == owner.isolations.load(ordering: .relaxed))
      }
      for p in held { a.freePages(p, order: 0) }
      a.drainAllPages()
      try a.verify()
      #expect(a.freePageCount == a.managedPageCount)
    }
  }

  @Test func againThenSuccessMigratesWithinTheRetries() throws {
    let a = try memfdAllocator()
    let owner = RefusingOwner(.againTimes(5))
    let p = try #require(a.allocPages(order: 0, gfp: .highUserMovable, owner: owner))
    a.address(of: p)!.storeBytes(of: 0xfeed, as: UInt64.self)
    // The range holding p: migrated out by allocContigRange (SYNC: 3 + 7 passes).
    let range = PFN(p.value & ~511)..<PFN((p.value & ~511) + 512)
    try a.allocContigRange(range, gfp: .kernel)
    let dst = try #require(owner.moved.withLock { $0[p.value] })
    #expect(!range.contains(PFN(dst)))
    #expect(a.address(of: PFN(dst))!.load(as: UInt64.self) == 0xfeed)
    #expect(a.isMovable(PFN(dst)))
    #expect(a.compactionStatistics().pgmigrateSuccess == 1)
    a.freeContigRange(range.lowerBound, count: range.count)
    a.freePages(PFN(dst), order: 0)
    a.drainAllPages()
    try a.verify()
    #expect(a.freePageCount == a.managedPageCount)
  }

  @Test func pinnedPagesDoNotMove() throws {
    let a = try memfdAllocator()
    let table = MovablePageTable(allocator: a)
    let (movable, unmovable) = fragmentWithMovableOwners(a, table)
    // An extra reference pins a page, as for the kernel's anonymous pages.
    let pinned = Array(movable.prefix(50))
    let where0 = pinned.map { table.pfn(of: $0)! }
    for p in where0 { a.getPage(p) }
    a.compactAll()
    for (h, p) in zip(pinned, where0) {
      #expect(table.pfn(of: h) == p)
      #expect(checkPattern(a, table, h))
      a.putPage(p)
    }
    for h in movable { table.free(h) }
    for p in unmovable { a.freePages(p, order: 0) }
    a.drainAllPages()
    try a.verify()
    #expect(a.freePageCount == a.managedPageCount)
  }

  @Test func compoundMovableBlocksMoveWhole() throws {
    let a = try memfdAllocator()
    let table = MovablePageTable(allocator: a)
    // First, while nothing is deferred: the order-2 fill below ends in failed (and
    // deferred) compactions, after which the kernel too would defer an order-9 attempt.
    let big = try #require(table.allocate(order: 9))
    writePattern(table, big)
    var hs: [MovablePageTable.Handle] = []
    while let h = table.allocate(order: 2, gfp: [.highUserMovable, .noWarn]) { hs.append(h) }
    var kept: [MovablePageTable.Handle] = []
    for h in hs {
      if table.pfn(of: h)!.value % 64 == 0 {
        writePattern(table, h)
        kept.append(h)
      } else {
        table.free(h)
      }
    }
    a.drainAllPages()
    let bigAt = try #require(table.pfn(of: big))
    a.compactAll()
    // Compaction never moves a block of pageblock order (skip_isolation_on_order()).
    #expect(table.pfn(of: big) == bigAt)
    for h in kept + [big] {
      let p = try #require(table.pfn(of: h))
      #expect(checkPattern(a, table, h))
      #expect(a.refcount(of: p + 1) == 0)
    }
    let s = a.compactionStatistics()
    #expect(s.pgmigrateSuccess % 4 == 0)
    #expect(s.pgmigrateSuccess > 0)
    #expect(s.thpMigrationSuccess == 0)
    // A contiguous range does move it: a THP migration.
    try a.allocContigRange(bigAt..<(bigAt + 512), gfp: .kernel)
    #expect(table.pfn(of: big) != bigAt)
    #expect(checkPattern(a, table, big))
    #expect(a.compactionStatistics().thpMigrationSuccess == 1)
    a.freeContigRange(bigAt, count: 512)
    for h in kept + [big] { table.free(h) }
    a.drainAllPages()
    try a.verify()
    #expect(a.freePageCount == a.managedPageCount)
  }

  @Test func anOwnerFreeingAnIsolatedPageIsHandled() throws {
    let a = try memfdAllocator()
    // The owner frees the page from inside isolate (after saying yes): the migration then
    // sees only its own reference and finishes without asking.
    final class Freer: MovablePageOwner, @unchecked Sendable {
      unowned let a: PageAllocator
      let asked = Atomic<Int>(0)
      init(_ a: PageAllocator) { self.a = a }
      func isolatePage(_ pfn: PFN, order: Int, mode: MigrationMode) -> Bool {
        a.freePages(pfn, order: order)
        return true
      }
      func migratePage(from s: PFN, to d: PFN, order: Int, mode: MigrationMode) -> MigrationResult {
        asked.wrappingAdd(1, ordering: .relaxed)
        return .failure
      }
      func putBackPage(_ pfn: PFN, order: Int) {}
    }
    let owner = Freer(a)
    let p = try #require(a.allocPages(order: 0, gfp: .highUserMovable, owner: owner))
    let range = PFN(p.value & ~511)..<PFN((p.value & ~511) + 512)
    try a.allocContigRange(range, gfp: .kernel)
    #expect(owner.asked.load(ordering: .relaxed) == 0)
    a.freeContigRange(range.lowerBound, count: 512)
    a.drainAllPages()
    try a.verify()
    #expect(a.freePageCount == a.managedPageCount)
    #expect(a.movableBlockCount == 0)
    #expect(a.badPageCount == 0)
  }

  /// The moment the owner's table points at the new pfn, another thread may free the block
  /// there: migration must have finished with the target before `migratePage` returns.
  /// This owner frees the target inside `migratePage` (the extreme of that race): the
  /// target's registration, page_owner record and movable flag must already be its, so the
  /// free ends the registration and leaves a clean free page.
  @Test(arguments: [false, true])
  func anOwnerFreeingTheTargetAtOnceLeavesItClean(pageOwner: Bool) throws {
    var c = PageAllocator.Configuration.normal(pages: 1 << 14, cpuCount: 1, backing: .memfd)
    c.pageOwner = pageOwner
    c.checkPages = true
    let a = try PageAllocator(configuration: c)
    final class FreeAtOnce: MovablePageOwner, @unchecked Sendable {
      unowned let a: PageAllocator
      let sawTarget = Atomic<Int>(0)
      init(_ a: PageAllocator) { self.a = a }
      func isolatePage(_ pfn: PFN, order: Int, mode: MigrationMode) -> Bool { true }
      func migratePage(from s: PFN, to d: PFN, order: Int, mode: MigrationMode) -> MigrationResult {
        if a.isMovable(d) { sawTarget.wrappingAdd(1, ordering: .relaxed) }
        a.freePages(d, order: order)
        return .success
      }
      func putBackPage(_ pfn: PFN, order: Int) {}
    }
    let owner = FreeAtOnce(a)
    let p = try #require(a.allocPages(order: 0, gfp: .highUserMovable, owner: owner))
    let range = PFN(p.value & ~511)..<PFN((p.value & ~511) + 512)
    try a.allocContigRange(range, gfp: .kernel)
    #expect(owner.sawTarget.load(ordering: .relaxed) == 1)
    #expect(a.compactionStatistics().pgmigrateSuccess == 1)
    #expect(a.movableBlockCount == 0)
    a.freeContigRange(range.lowerBound, count: 512)
    a.drainAllPages()
    try a.verify()
    #expect(a.freePageCount == a.managedPageCount)
    #expect(a.badPageCount == 0)
  }

  // MARK: alloc_contig_range

  @Test func contigRangeMigratesMovablePagesOut() throws {
    let a = try memfdAllocator()
    let table = MovablePageTable(allocator: a)
    var hs: [MovablePageTable.Handle] = []
    while let h = table.allocate(order: 0, gfp: [.highUserMovable, .noWarn]) {
      hs.append(h)
      if hs.count == 6000 { break }
    }
    for h in hs { writePattern(table, h) }
    let range = PFN(2048)..<PFN(6144)
    let inside = hs.filter { range.contains(table.pfn(of: $0)!) }
    #expect(inside.count > 3000)
    try a.allocContigRange(range, gfp: .kernel)
    for h in hs {
      #expect(!range.contains(table.pfn(of: h)!))
      #expect(checkPattern(a, table, h))
    }
    for p in range { #expect(a.refcount(of: p) == 1) }
    #expect(a.compactionStatistics().pgmigrateSuccess == inside.count)
    try a.verify()
    a.freeContigRange(range.lowerBound, count: range.count)
    for h in hs { table.free(h) }
    a.drainAllPages()
    try a.verify()
    #expect(a.freePageCount == a.managedPageCount)
  }

  @Test func contigRangeFailsAtTheFirstUnmovablePage() throws {
    let a = try memfdAllocator()
    let table = MovablePageTable(allocator: a)
    var hs: [MovablePageTable.Handle] = []
    for _ in 0..<4096 { hs.append(try #require(table.allocate(order: 0))) }
    // Two unmovable pages in the middle of the movable ones.
    let u1 = try #require(a.allocPages(order: 0, gfp: .kernel))
    let u2 = try #require(a.allocPages(order: 0, gfp: .kernel))
    let lo = min(u1, u2)
    let range = PFN(0)..<PFN(8192)
    #expect(throws: ContigRangeError.busy(lo, reason: .unmovable)) { try a.allocContigRange(range, gfp: .kernel) }
    // Nothing moved, nothing isolated.
    #expect(a.compactionStatistics().pgmigrateSuccess == 0)
    #expect(a.zoneStatistics()[0].isolatedFreePages == 0)
    // A pinned movable page: migration fails, and the error says where.
    let pinnedHandle = hs[100]
    let pinned = table.pfn(of: pinnedHandle)!
    a.getPage(pinned)
    let small = PFN(pinned.value & ~511)..<PFN((pinned.value & ~511) + 512)
    #expect(throws: ContigRangeError.busy(pinned, reason: .migrationFailed)) {
      try a.allocContigRange(small, gfp: .kernel)
    }
    a.putPage(pinned)
    try a.verify()
    for h in hs { table.free(h) }
    a.freePages(u1, order: 0)
    a.freePages(u2, order: 0)
    a.drainAllPages()
    try a.verify()
    #expect(a.freePageCount == a.managedPageCount)
  }

  @Test func contigPagesFindRangesOverMovablePages() throws {
    let a = try memfdAllocator()
    let table = MovablePageTable(allocator: a)
    var hs: [MovablePageTable.Handle] = []
    while let h = table.allocate(order: 0, gfp: [.highUserMovable, .noWarn]) { hs.append(h) }
    // Everything is in use, but movable: a range can be made (there is room to move to
    // once some pages are freed).
    for h in hs.suffix(4000) { table.free(h) }
    hs.removeLast(4000)
    let p = try #require(a.allocContigPages(count: 1024, gfp: .kernel))
    for h in hs { #expect(!(p..<(p + 1024)).contains(table.pfn(of: h)!)) }
    a.freeContigRange(p, count: 1024)
    for h in hs { table.free(h) }
    a.drainAllPages()
    try a.verify()
    #expect(a.freePageCount == a.managedPageCount)
  }

  // MARK: Direct compaction

  @Test func directCompactionMakesOrder9AllocationsSucceed() throws {
    let a = try memfdAllocator()
    let table = MovablePageTable(allocator: a)
    let (movable, unmovable) = fragmentWithMovableOwners(a, table)
    a.directCompactionEnabled = false
    #expect(a.allocPages(order: 9, gfp: [.highUserMovable, .noWarn]) == nil)
    #expect(a.compactionStatistics().compactStall == 0)
    a.directCompactionEnabled = true
    let trace = TraceBuffer()
    a.setTraceSink(trace)
    let p = try #require(a.allocPages(order: 9, gfp: .highUserMovable))
    a.setTraceSink(nil)
    let s = a.compactionStatistics()
    #expect(s.compactStall == s.compactSuccess + s.compactFail)
    #expect(s.compactSuccess == 1)
    // Captured: the block never went through the free lists' allocation path.
    let events = trace.snapshot
    #expect(!events.contains { $0.kind == .pageAllocZoneLocked && $0.pfn == p })
    #expect(events.contains { $0.kind == .compactionBegin })
    #expect(events.contains { $0.kind == .compactionTryToCompactPages && $0.values == [9, 2] })
    #expect(events.last { $0.kind == .pageAlloc }?.pfn == p)
    #expect(a.refcount(of: p) == 1)
    for h in movable { #expect(checkPattern(a, table, h)) }
    // More order-9 allocations keep succeeding while movable blocks can be emptied.
    var blocks = [p]
    while let q = a.allocPages(order: 9, gfp: [.highUserMovable, .noWarn]) { blocks.append(q) }
    #expect(blocks.count >= 4)
    let s2 = a.compactionStatistics()
    #expect(s2.compactStall == s2.compactSuccess + s2.compactFail)
    for h in movable { #expect(checkPattern(a, table, h)) }
    for b in blocks { a.freePages(b, order: 9) }
    for h in movable { table.free(h) }
    for p in unmovable { a.freePages(p, order: 0) }
    a.drainAllPages()
    try a.verify()
    #expect(a.freePageCount == a.managedPageCount)
  }

  @Test func noRetryCostlyRequestsGetNoDirectCompaction() throws {
    let a = try memfdAllocator()
    let table = MovablePageTable(allocator: a)
    let (movable, unmovable) = fragmentWithMovableOwners(a, table)
    #expect(a.allocPages(order: 9, gfp: [.highUserMovable, .noRetry, .noWarn]) == nil)
    // Without __GFP_IO compaction is not allowed either.
    #expect(a.allocPages(order: 9, gfp: [.highmem, .movable, .directReclaim, .noWarn]) == nil)
    #expect(a.compactionStatistics().compactStall == 0)
    for h in movable { table.free(h) }
    for p in unmovable { a.freePages(p, order: 0) }
  }

  // MARK: Deferral, skip bits, cached positions

  @Test func deferralSequence() throws {
    let a = try makeAllocator(cpus: 1)
    // Shift 0: never deferred.
    #expect(!a.compactionDeferred(0, 9))
    a.deferCompaction(0, 9)
    // Shift 1: one attempt skipped, then allowed.
    #expect(a.compactionDeferred(0, 9))
    #expect(!a.compactionDeferred(0, 9))
    // Lower orders than order_failed are never deferred.
    #expect(!a.compactionDeferred(0, 5) || a.compaction.zones[0].orderFailed.load(ordering: .relaxed) <= 5)
    for _ in 0..<10 { a.deferCompaction(0, 9) }
    #expect(a.compaction.zones[0].deferShift.load(ordering: .relaxed) == 6)
    var skipped = 0
    while a.compactionDeferred(0, 9) { skipped += 1 }
    #expect(skipped == 63)
    #expect(a.compactionRestarting(0, 9))
    a.compactionDeferReset(0, 9, allocSuccess: true)
    #expect(a.compaction.zones[0].deferShift.load(ordering: .relaxed) == 0)
    #expect(a.compaction.zones[0].orderFailed.load(ordering: .relaxed) == 10)
    #expect(!a.compactionDeferred(0, 9))
  }

  @Test func cachedMigratePfnOvershootsAnAlignedPfn() throws {
    let a = try makeAllocator(cpus: 1)
    var cc = CompactControl(zi: 0, order: 9, gfp: .kernel, mode: .syncLight, highestZoneKind: 2)
    a.updateCachedMigrate(cc, 1024)
    // ALIGN(1024 + 1, 512): one pageblock further, as the kernel does.
    #expect(a.compaction.zones[0].cachedMigrate0.load(ordering: .relaxed) == 1536)
    #expect(a.compaction.zones[0].cachedMigrate1.load(ordering: .relaxed) == 1536)
    cc.mode = .async
    a.updateCachedMigrate(cc, 3000)
    #expect(a.compaction.zones[0].cachedMigrate0.load(ordering: .relaxed) == 3072)
    #expect(a.compaction.zones[0].cachedMigrate1.load(ordering: .relaxed) == 1536)
  }

  @Test func scannersMeetingCompletesAndFlushesOnlyForDirect() throws {
    let a = try makeAllocator(pages: 1 << 14, cpus: 1)
    var cc = CompactControl(zi: 0, order: -1, gfp: .kernel, mode: .sync, highestZoneKind: 2)
    cc.wholeZone = true
    #expect(a.compactZoneRun(&cc, capture: nil) == .complete)
    let flushed0 = a.compaction.zones[0].blockskipFlush.load(ordering: .relaxed)
    #expect(!flushed0)
    #expect(a.compaction.zones[0].cachedMigrate0.load(ordering: .relaxed) == 0)
    #expect(a.compaction.zones[0].cachedFree.load(ordering: .relaxed) == (1 << 14) - 512)
    var d = CompactControl(zi: 0, order: -1, gfp: .kernel, mode: .sync, highestZoneKind: 2)
    d.directCompaction = true
    a.compaction.zones[0].initMigrate.store(-1, ordering: .relaxed)
    #expect(a.compactZoneRun(&d, capture: nil) == .partialSkipped)
    let flushed1 = a.compaction.zones[0].blockskipFlush.load(ordering: .relaxed)
    #expect(flushed1)
    a.resetIsolationSuitable()
    let flushed2 = a.compaction.zones[0].blockskipFlush.load(ordering: .relaxed)
    #expect(!flushed2)
  }

  @Test func asyncDirectCompactionGivesUpChunksWithAnUnmovablePage() throws {
    let a = try memfdAllocator()
    let table = MovablePageTable(allocator: a)
    // Fill everything: movable pages with one unmovable page in each order-9 chunk.
    var hs: [MovablePageTable.Handle] = []
    var unmovable: [PFN] = []
    while let h = table.allocate(order: 0, gfp: [.highUserMovable, .noWarn]) { hs.append(h) }
    // The unmovable page comes before 32 movable ones could be isolated in its chunk (a
    // batch of 32 would be migrated before the scan reached it, as in the kernel).
    for h in hs where table.pfn(of: h)!.value % 512 == 10 {
      let p = table.pfn(of: h)!
      table.free(h)
      a.drainAllPages()
      _ = a.claimFreeRange(p.value, count: 1)
      unmovable.append(p)
    }
    hs.removeAll { table.pfn(of: $0) == nil }
    for h in hs.enumerated().filter({ $0.offset % 2 == 0 }).map(\.element) { table.free(h) }
    hs = hs.filter { table.pfn(of: $0) != nil }
    a.drainAllPages()
    var cc = CompactControl(zi: 0, order: 9, gfp: .highUserMovable, mode: .async, highestZoneKind: 2)
    cc.directCompaction = true
    cc.allocCMA = true
    _ = a.compactZoneRun(&cc, capture: nil)
    // No order-aligned chunk could become free: nothing was migrated.
    #expect(a.compactionStatistics().pgmigrateSuccess == 0)
    for h in hs { table.free(h) }
    for p in unmovable { a.freePages(p, order: 0) }
    a.drainAllPages()
    try a.verify()
    #expect(a.freePageCount == a.managedPageCount)
  }

  // MARK: Proactive compaction and kcompactd

  @Test func proactiveCompactionStopsAtTheLowMark() throws {
    let a = try memfdAllocator()
    let table = MovablePageTable(allocator: a)
    let (movable, unmovable) = fragmentWithMovableOwners(a, table)
    #expect(a.extfragScore > 90)
    let r = a.compactProactively()
    #expect(r.ran)
    #expect(r.scoreAfter <= 80)
    #expect(r.scoreAfter < r.scoreBefore)
    #expect(a.compactionStatistics().compactDaemonMigrateScanned > 0)
    // Below the high mark: nothing runs.
    #expect(!a.compactProactively().ran)
    // Proactiveness 0: off.
    a.compactionProactiveness = 0
    #expect(a.runKcompactd() == nil)
    for h in movable { #expect(checkPattern(a, table, h)) }
    for h in movable { table.free(h) }
    for p in unmovable { a.freePages(p, order: 0) }
    a.drainAllPages()
    try a.verify()
  }

  @Test func kcompactdBacksOffWhenProactiveCompactionCannotProgress() throws {
    let a = try memfdAllocator()
    // Unmovable fragmentation: nothing can move.
    var pages: [PFN] = []
    while let p = a.allocPages(order: 0, gfp: [.kernel, .noWarn]) { pages.append(p) }
    for p in pages where p.value % 16 != 7 { a.freePages(p, order: 0) }
    a.drainAllPages()
    #expect(a.extfragScore > 90)
    #expect(a.runKcompactd() == 500 << 6)
    for p in pages where p.value % 16 == 7 { a.freePages(p, order: 0) }
  }

  @Test func backgroundKcompactdCompactsAndStops() throws {
    // Proactiveness 0: the daemon sleeps until woken, so nothing runs during the fill.
    var config = PageAllocator.Configuration.normal(pages: 1 << 14, cpuCount: 2, backing: .memfd)
    config.compaction.backgroundThread = true
    config.compaction.kcompactdIntervalMilliseconds = 10
    config.compaction.proactiveness = 0
    PageAllocator.setThreadCPU(0)
    defer { PageAllocator.setThreadCPU(nil) }
    var a: PageAllocator? = try PageAllocator(configuration: config)
    let table = MovablePageTable(allocator: a!)
    let (movable, unmovable) = fragmentWithMovableOwners(a!, table)
    #expect(a!.extfragScore > 90)
    // Writing the sysctl wakes it; wait (bounded, not timed) until the score is down.
    a!.compactionProactiveness = 20
    var waited = 0
    while a!.extfragScore > 80 && waited < 2000 {
      usleep(5000)
      waited += 1
    }
    #expect(a!.extfragScore <= 80)
    for h in movable { #expect(checkPattern(a!, table, h)) }
    for h in movable { table.free(h) }
    for p in unmovable { a!.freePages(p, order: 0) }
    a = nil
  }

  // MARK: Traces

  @Test func compactionTraceFormats() {
    func t(_ k: TraceEvent.Kind, _ v: [Int], gfp: GFP = []) -> String {
      TraceEvent(kind: k, pfn: nil, order: 0, gfp: gfp, values: v).formatted
    }
    #expect(
      t(.compactionIsolateMigratepages, [0x200, 0x400, 512, 32])
        == "mm_compaction_isolate_migratepages: range=(0x200 ~ 0x400) nr_scanned=512 nr_taken=32")
    #expect(
      t(.compactionIsolateFreepages, [0x3e00, 0x3e40, 64, 32])
        == "mm_compaction_isolate_freepages: range=(0x3e00 ~ 0x3e40) nr_scanned=64 nr_taken=32")
    #expect(t(.compactionMigratepages, [30, 2]) == "mm_compaction_migratepages: nr_migrated=30 nr_failed=2")
    #expect(
      t(.compactionBegin, [0, 0x200, 0x3e00, 0x4000, 0])
        == "mm_compaction_begin: zone_start=0x0 migrate_pfn=0x200 free_pfn=0x3e00 zone_end=0x4000, mode=async")
    #expect(
      t(.compactionEnd, [0, 0x200, 0x3e00, 0x4000, 1, 8])
        == "mm_compaction_end: zone_start=0x0 migrate_pfn=0x200 free_pfn=0x3e00 zone_end=0x4000, mode=sync status=success"
    )
    #expect(
      t(.compactionTryToCompactPages, [9, 2], gfp: .highUserMovable)
        == "mm_compaction_try_to_compact_pages: order=9 gfp_mask=GFP_HIGHUSER_MOVABLE priority=2")
    #expect(t(.compactionSuitable, [2, 9, 4]) == "mm_compaction_suitable: node=0 zone=Normal   order=9 ret=continue")
    #expect(
      t(.compactionFinished, [0, -1, 3]) == "mm_compaction_finished: node=0 zone=DMA      order=-1 ret=no_suitable_page"
    )
    #expect(
      t(.compactionDeferCompaction, [2, 9, 9, 0, 1])
        == "mm_compaction_defer_compaction: node=0 zone=Normal   order=9 order_failed=9 consider=0 limit=2")
    #expect(t(.compactionKcompactdSleep, [0]) == "mm_compaction_kcompactd_sleep: nid=0")
    #expect(
      t(.compactionWakeupKcompactd, [0, 9, 2]) == "mm_compaction_wakeup_kcompactd: nid=0 order=9 classzone_idx=Normal  "
    )
    #expect(t(.migratePagesStart, [2, 6]) == "mm_migrate_pages_start: mode=MIGRATE_SYNC reason=contig_range")
    #expect(
      t(.migratePages, [30, 2, 0, 0, 0, 0, 0, 0])
        == "mm_migrate_pages: nr_succeeded=30 nr_failed=2 nr_thp_succeeded=0 nr_thp_failed=0 nr_thp_split=0 nr_split=0 mode=MIGRATE_ASYNC reason=compaction"
    )
    #expect(
      t(.testPagesIsolated, [0x800, 0x1000, 0x900])
        == "test_pages_isolated: start_pfn=0x800 end_pfn=0x1000 fin_pfn=0x900 ret=fail")
    #expect(
      t(.testPagesIsolated, [0x800, 0x1000, 0x1000])
        == "test_pages_isolated: start_pfn=0x800 end_pfn=0x1000 fin_pfn=0x1000 ret=success")
  }

  @Test func aDirectCompactionTracesInTheKernelsOrder() throws {
    let a = try memfdAllocator()
    let table = MovablePageTable(allocator: a)
    let (movable, unmovable) = fragmentWithMovableOwners(a, table)
    let trace = TraceBuffer()
    a.setTraceSink(trace)
    let p = try #require(a.allocPages(order: 9, gfp: .highUserMovable))
    a.setTraceSink(nil)
    let names = trace.snapshot.map(\.kind).filter {
      $0.rawValue.hasPrefix("mm_compaction") || $0.rawValue.hasPrefix("mm_migrate")
    }
    // try_to_compact_pages -> suitable -> begin -> (finished -> isolate ... -> migrate) x N
    // -> end -> defer_reset.
    #expect(names.first == .compactionTryToCompactPages)
    #expect(names.dropFirst().first == .compactionSuitable)
    #expect(names.dropFirst(2).first == .compactionBegin)
    #expect(names.dropFirst(3).first == .compactionFinished)
    #expect(names.contains(.compactionIsolateMigratepages))
    #expect(names.contains(.compactionIsolateFreepages))
    #expect(names.contains(.migratePagesStart) && names.contains(.migratePages))
    let end = try #require(names.lastIndex(of: .compactionEnd))
    #expect(names[(end + 1)...].contains(.compactionDeferReset))
    #expect(trace.snapshot.last { $0.kind == .compactionEnd }?.values.last == CompactionResult.success.rawValue)
    a.freePages(p, order: 9)
    for h in movable { table.free(h) }
    for q in unmovable { a.freePages(q, order: 0) }
  }
}

extension CompactionTests {
  /// Migration runs the debug steps a kernel's does: a target taken off a free list is made
  /// accessible (debug_pagealloc) and its poison checked before the copy writes it, an
  /// unused one is poisoned and protected again, and page_owner's record of the source
  /// moves to the target with the reason (`__folio_copy_owner()`).
  @Test(arguments: [false, true]) func migrationUnderTheDebugOptions(poison: Bool) throws {
    var config = PageAllocator.Configuration.normal(pages: 1 << 14, cpuCount: 1, backing: .memfd)
    config.pageOwner = true
    config.debugPageAlloc = !poison
    config.poisonPages = poison
    let a = try PageAllocator(configuration: config)
    PageAllocator.setThreadCPU(0)
    defer { PageAllocator.setThreadCPU(nil) }
    let table = MovablePageTable(allocator: a)
    let (movable, unmovable) = fragmentWithMovableOwners(a, table)
    let before = Dictionary(uniqueKeysWithValues: movable.map { ($0, table.pfn(of: $0)!) })
    a.compactAll()
    var moved = 0
    for h in movable {
      #expect(checkPattern(a, table, h))
      let p = try #require(table.pfn(of: h))
      if p != before[h] {
        moved += 1
        #expect(a.pageOwner(of: p)?.lastMigrateReason == .compaction)
      }
    }
    #expect(moved > 0)
    // A contiguous range over the moved pages: the reason is contig_range now.
    let h = movable[movable.count / 2]
    let p = try #require(table.pfn(of: h))
    let lo = PFN(p.value & ~511)
    try a.allocContigRange(lo..<(lo + 512), gfp: .kernel)
    let q = try #require(table.pfn(of: h))
    #expect(q != p)
    #expect(a.pageOwner(of: q)?.lastMigrateReason == .contigRange)
    #expect(checkPattern(a, table, h))
    a.freeContigRange(lo, count: 512)
    for h in movable { table.free(h) }
    for u in unmovable { a.freePages(u, order: 0) }
    a.drainAllPages()
    try a.verify()
    #expect(a.badPageCount == 0)
    #expect(a.freePageCount == a.managedPageCount)
  }
}

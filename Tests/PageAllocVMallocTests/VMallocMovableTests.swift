import Glibc
import Synchronization
import Testing

@testable import PageAlloc
import PageAllocTestSupport
import _PageAllocUtilities
@testable import PageAllocVMalloc

/// Movable vmalloc areas: compaction and contiguous ranges move their pages, the areas keep
/// their addresses and bytes, the scoped accessor pins them.
@Suite struct VMallocMovableTests {
  struct Live {
    var address: UnsafeMutableRawPointer
    var pages: Int
    var tag: UInt64
  }

  static func word(_ tag: UInt64, _ i: Int) -> UInt64 { tag &* 0x9E37_79B9_7F4A_7C15 ^ UInt64(i) }

  /// Movable areas of 1...8 pages, scattered: many allocated, most freed.
  func fragment(_ v: VMalloc, seed: UInt64, count: Int = 1500) -> [Live] {
    var rng = TestRNG(seed: seed)
    var all: [Live] = []
    for k in 0..<count {
      let n = 1 + rng.below(8)
      guard let p = v.vmalloc(n * 4096, gfp: [.highUserMovable, .noWarn]) else { break }
      all.append(Live(address: p, pages: n, tag: UInt64(k + 1)))
    }
    var kept: [Live] = []
    for (i, l) in all.enumerated() {
      if i % 5 == 0 { kept.append(l) } else { v.vfree(l.address) }
    }
    for l in kept { write(v, l) }
    return kept
  }

  func write(_ v: VMalloc, _ l: Live) {
    _ = v.withPinnedArea(l.address) { bytes, _ in
      for i in 0..<l.pages {
        bytes.storeBytes(of: Self.word(l.tag, i), toByteOffset: i * 4096, as: UInt64.self)
        bytes.storeBytes(of: ~Self.word(l.tag, i), toByteOffset: i * 4096 + 4088, as: UInt64.self)
      }
    }
  }

  /// The pattern through the area's address and through the allocator's address of each
  /// page the area has now: equal only when the bytes moved and the window followed.
  func check(_ a: PageAllocator, _ v: VMalloc, _ l: Live) -> Bool {
    v.withPinnedArea(l.address) { bytes, pages in
      guard pages.count == l.pages, bytes.baseAddress == l.address else { return false }
      for i in 0..<l.pages {
        let w = Self.word(l.tag, i)
        guard bytes.load(fromByteOffset: i * 4096, as: UInt64.self) == w,
          bytes.load(fromByteOffset: i * 4096 + 4088, as: UInt64.self) == ~w,
          let q = a.address(of: pages[i]), q.load(as: UInt64.self) == w
        else { return false }
      }
      return true
    } ?? false
  }

  /// The area's `rw-s` VMAs: one per physically contiguous run of its pages, at the
  /// right memfd offsets, and as many as its charge says.
  func expectMappedAsRuns(_ a: PageAllocator, _ v: VMalloc, _ l: Live) throws {
    let pages = try #require(v.pages(of: l.address))
    let start = UInt(bitPattern: l.address)
    let end = start + UInt(pages.count * 4096)
    let maps = processMappings(in: start, end).filter { $0.permissions == "rw-s" }
    #expect(maps.count == VMalloc.runCount(pages))
    for m in maps {
      let first = Int(m.start - start) / 4096
      #expect(m.fileOffset == a.memfdOffset(of: pages[first]))
      for j in 0..<(Int(m.end - m.start) / 4096) { #expect(pages[first + j] == pages[first] + j) }
    }
  }

  @Test func compactionMovesAreasPagesKeepingAddressAndBytes() throws {
    let (a, v) = try makeVMalloc(pages: 1 << 14)
    let live = fragment(v, seed: 7)
    #expect(live.count > 100)
    let before = live.map { v.pages(of: $0.address)! }
    a.compactAll()
    #expect(v.migrationCount > 0)
    #expect(a.compactionStatistics().pgmigrateSuccess == v.migrationCount)
    var moved = 0
    for (l, old) in zip(live, before) {
      #expect(check(a, v, l))
      try expectMappedAsRuns(a, v, l)
      if v.pages(of: l.address)! != old { moved += 1 }
    }
    #expect(moved > 0)
    try v.verify()
    try a.verify()
    // The charges follow the runs, whole window included.
    let rw = v.windowMappings().filter { $0.permissions == "rw-s" }.count
    #expect(rw + live.count == v.chargedMappings)
    for l in live { #expect(v.vfree(l.address)) }
    a.drainAllPages()
    #expect(a.freePageCount == a.managedPageCount)
    #expect(a.movableBlockCount == 0)
    try v.verify()
  }

  @Test func contigRangeOverAMovableArea() throws {
    let (a, v) = try makeVMalloc(pages: 1 << 14)
    let big = try #require(v.vmalloc(600 * 4096, gfp: .highUserMovable))
    let l = Live(address: big, pages: 600, tag: 99)
    write(v, l)
    let pages = v.pages(of: big)!
    let lo = PFN(pages.map(\.value).min()! & ~511)
    let range = lo..<(lo + 512)
    try a.allocContigRange(range, gfp: .kernel)
    #expect(check(a, v, l))
    #expect(!v.pages(of: big)!.contains { range.contains($0) })
    try expectMappedAsRuns(a, v, l)
    try v.verify()
    a.freeContigRange(range.lowerBound, count: 512)
    #expect(v.vfree(big))
    a.drainAllPages()
    #expect(a.freePageCount == a.managedPageCount)
  }

  @Test func aPinnedAreaDoesNotMove() throws {
    let (a, v) = try makeVMalloc(pages: 1 << 14)
    let live = fragment(v, seed: 11)
    let target = live[live.count / 2]
    let before = v.pages(of: target.address)!
    let refusedBefore = v.pinRefusalCount
    _ = v.withPinnedArea(target.address) { _, pages in
      #expect(pages == before)
      a.compactAll()
      // Inside the scope the pages are where they were.
      #expect(v.pages(of: target.address)! == before)
    }
    #expect(v.pinRefusalCount > refusedBefore)
    #expect(check(a, v, target))
    // Outside the scope they may move again.
    a.compactAll()
    for l in live { #expect(check(a, v, l)) }
    for l in live { v.vfree(l.address) }
    a.drainAllPages()
    #expect(a.freePageCount == a.managedPageCount)
  }

  @Test func nonMovableAreasStayPut() throws {
    let (a, v) = try makeVMalloc(pages: 1 << 14)
    var areas: [UnsafeMutableRawPointer] = []
    for _ in 0..<400 { areas.append(try #require(v.vmalloc(3 * 4096, gfp: .kernel))) }
    for (i, p) in areas.enumerated() where i % 4 != 0 { v.vfree(p) }
    areas = areas.enumerated().filter { $0.offset % 4 == 0 }.map(\.element)
    let before = areas.map { v.pages(of: $0)! }
    a.compactAll()
    #expect(areas.map { v.pages(of: $0)! } == before)
    #expect(v.migrationCount == 0)
    for p in areas { v.vfree(p) }
  }

  /// Readers pin and check the areas (and write new patterns) on other threads while the
  /// main thread compacts and takes contiguous ranges: no byte is lost, no address moves.
  /// Run under ThreadSanitizer too (`swift test --sanitize=thread`).
  @Test func readersThroughTheAccessorWhileCompacting() throws {
    let (a, v) = try makeVMalloc(pages: 1 << 14)
    let live = fragment(v, seed: 23, count: 1200)
    final class Shared: @unchecked Sendable {
      let live: [Live]
      /// Each area's current tag, written only by the reader that owns the area (and read
      /// by the test after the threads are joined).
      let tags: UnsafeMutablePointer<UInt64>
      let stop = Atomic<Bool>(false)
      let bad = Atomic<Int>(0)
      let checks = Atomic<Int>(0)
      init(_ l: [Live]) {
        live = l
        tags = .allocate(capacity: l.count)
        for (i, x) in l.enumerated() { tags[i] = x.tag }
      }
      deinit { tags.deallocate() }
    }
    let shared = Shared(live)
    let readers = 3
    try runOnThreads(readers + 1) { t in
      if t == readers {
        // The compactor.
        for round in 0..<6 {
          a.compactAll()
          let lo = PFN((round * 2048) % (1 << 14))
          if (try? a.allocContigRange(lo..<(lo + 1024), gfp: .kernel)) != nil {
            a.freeContigRange(lo, count: 1024)
          }
          _ = a.compactZone(order: 9)
        }
        shared.stop.store(true, ordering: .releasing)
        return
      }
      var rng = TestRNG(seed: UInt64(t) &+ 5)
      var mine = 0
      while !shared.stop.load(ordering: .acquiring) || mine < 50 {
        // Each reader owns the areas i % readers == t: it may rewrite their patterns.
        let i = rng.below(shared.live.count / readers) * readers + t
        guard i < shared.live.count else { continue }
        let l = shared.live[i]
        let tag = shared.tags[i]
        let ok =
          v.withPinnedArea(l.address) { bytes, pages -> Bool in
            for k in 0..<l.pages {
              let w = Self.word(tag, k)
              if bytes.load(fromByteOffset: k * 4096, as: UInt64.self) != w { return false }
              if bytes.load(fromByteOffset: k * 4096 + 4088, as: UInt64.self) != ~w { return false }
              if a.address(of: pages[k])!.load(as: UInt64.self) != w { return false }
            }
            let next = tag &+ 1_000_003
            for k in 0..<l.pages {
              bytes.storeBytes(of: Self.word(next, k), toByteOffset: k * 4096, as: UInt64.self)
              bytes.storeBytes(of: ~Self.word(next, k), toByteOffset: k * 4096 + 4088, as: UInt64.self)
            }
            shared.tags[i] = next
            return true
          } ?? false
        if !ok { shared.bad.wrappingAdd(1, ordering: .relaxed) }
        shared.checks.wrappingAdd(1, ordering: .relaxed)
        mine += 1
      }
    }
    #expect(shared.bad.load(ordering: .relaxed) == 0)
    #expect(shared.checks.load(ordering: .relaxed) > 0)
    #expect(v.migrationCount > 0)
    for (i, l) in live.enumerated() {
      var m = l
      m.tag = shared.tags[i]
      #expect(check(a, v, m))
      try expectMappedAsRuns(a, v, m)
    }
    try v.verify()
    try a.verify()
    for l in live { v.vfree(l.address) }
    a.drainAllPages()
    #expect(a.freePageCount == a.managedPageCount)
    #expect(a.movableBlockCount == 0)
  }
}

import Testing

@testable import PageAlloc
import PageAllocTestSupport

/// `nr_pcp_alloc()`: how many blocks a pcp refill takes, and how it retunes `high` and
/// `alloc_factor`, against sequences worked out by hand from the kernel's rules.
///
/// A 1 GiB zone on one CPU: batch 63, high_min 1286 (the low watermark), high_max 32768.
/// Movable requests: the free lists are Movable, so no fallback interferes.
@Suite(.serialized) struct PcpRefillTests {
  func setUp(_ config: PageAllocator.Configuration) throws -> (PageAllocator, TraceBuffer) {
    let a = try PageAllocator(configuration: config)
    let t = TraceBuffer()
    a.setTraceSink(t)
    PageAllocator.setThreadCPU(0)
    return (a, t)
  }

  static let oneGiB = PageAllocator.Configuration.normal(pages: 1 << 18, cpuCount: 1, backing: .none)

  /// The sizes of the refills in `t`: runs of percpu_refill zone_locked events.
  func refillSizes(_ t: TraceBuffer) -> [Int] {
    var out: [Int] = []
    var run = 0
    for e in t.snapshot {
      if e.kind == .pageAllocZoneLocked && e.percpuRefill {
        run += 1
      } else if run > 0 {
        out.append(run)
        run = 0
      }
    }
    if run > 0 { out.append(run) }
    return out
  }

  /// Order-0 refills double (alloc_factor) up to batch << 5, each refill raises `high` by
  /// its size (up to high_max) so the next one fits: 63, 126, ... 2016, 2016.
  @Test func order0RefillsGrowAllocFactorAndHigh() throws {
    let (a, t) = try setUp(Self.oneGiB)
    defer { PageAllocator.setThreadCPU(nil) }
    let sizes = [63, 126, 252, 504, 1008, 2016, 2016]
    var highs: [Int] = []
    for n in sizes {
      for _ in 0..<n { _ = try #require(a.allocPages(order: 0, gfp: .highUserMovable)) }
      highs.append(a.pcp(0).pointee.high)
      #expect(a.pcpPageCount == 0)
    }
    #expect(refillSizes(t) == sizes)
    // high = 1286 + 63, + 126, + 252, ... : the refill's batch before the room cap.
    #expect(highs == [1349, 1475, 1727, 2231, 3239, 5255, 7271])
    #expect(a.pcp(0).pointee.allocFactor == 5)
    // A free halves alloc_factor.
    let p = try #require(a.allocPages(order: 0, gfp: .highUserMovable))
    a.freePages(p, order: 0)
    #expect(a.pcp(0).pointee.allocFactor == 2)
    try a.verify()
  }

  /// Orders above 0 take `batch >> order` blocks (at least 2) and leave alloc_factor alone:
  /// order 3 takes 7 blocks every time; order 9 takes 2 THP blocks.
  @Test func highOrderRefillsTakeBatchShiftedByOrder() throws {
    let (a, t) = try setUp(Self.oneGiB)
    defer { PageAllocator.setThreadCPU(nil) }
    for _ in 0..<(7 * 3) { _ = try #require(a.allocPages(order: 3, gfp: .highUserMovable)) }
    #expect(refillSizes(t) == [7, 7, 7])
    #expect(a.pcp(0).pointee.allocFactor == 0)
    #expect(a.pcp(0).pointee.high == 1286 + 3 * 63)
    t.removeAll()
    _ = try #require(a.allocPages(order: 9, gfp: [.highUserMovable, .comp]))
    #expect(refillSizes(t) == [2])
    #expect(a.pcpPageCount == 512)
    try a.verify()
  }

  /// A zone whose batch is 1 (16 MiB: managed >> 12 is 1, as for the DMA zone) refills one
  /// block at every order: no `max(batch >> order, 2)` for a batch of 1.
  @Test func batchOneRefillsOneBlock() throws {
    let (a, t) = try setUp(.normal(pages: 4096, cpuCount: 1, backing: .none))
    defer { PageAllocator.setThreadCPU(nil) }
    #expect(a.zoneStatistics()[0].batch == 1)
    _ = try #require(a.allocPages(order: 2, gfp: .highUserMovable))
    _ = try #require(a.allocPages(order: 0, gfp: .highUserMovable))
    #expect(refillSizes(t) == [1, 1])
    #expect(a.pcpPageCount == 0)
  }

  /// With percpu_pagelist_high_fraction set (high_min == high_max) `high` stays put, and
  /// order-0 refills still double.
  @Test func fixedHighKeepsHighButScalesTheBatch() throws {
    var c = Self.oneGiB
    c.percpuPagelistHighFraction = 8
    let (a, t) = try setUp(c)
    defer { PageAllocator.setThreadCPU(nil) }
    #expect(a.zoneStatistics()[0].highMin == 32768 && a.zoneStatistics()[0].highMax == 32768)
    for n in [63, 126, 252] {
      for _ in 0..<n { _ = try #require(a.allocPages(order: 0, gfp: .highUserMovable)) }
    }
    #expect(refillSizes(t) == [63, 126, 252])
    #expect(a.pcp(0).pointee.high == 32768)
  }

  /// While the zone is flagged ZONE_BELOW_HIGH, refills do not raise `high` and still
  /// double, capped by the room below `high`.
  @Test func belowHighRefillsDoNotRaiseHigh() throws {
    let (a, t) = try setUp(Self.oneGiB)
    defer { PageAllocator.setThreadCPU(nil) }
    // 1400 free pages: below high (1548), above low (1286).
    #expect(a.claimFreeRange(0, count: (1 << 18) - 1400) == .claimed)
    for _ in 0..<(63 + 126) { _ = try #require(a.allocPages(order: 0, gfp: .highUserMovable)) }
    let below = a.zones[0].belowHigh.load(ordering: .relaxed)
    #expect(below)
    #expect(refillSizes(t) == [63, 126])
    #expect(a.pcp(0).pointee.high == 1286)
  }
}

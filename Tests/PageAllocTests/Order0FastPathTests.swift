import PageAlloc
import Testing
import PageAllocTestSupport

/// The order-0 free fast path (freePages / putPage -> freeOrder0Checked) and the split
/// pcp refill keep the checks and accounting of the general path.
@Suite struct Order0FastPathTests {
  @Test func manyPairsAndRefills() throws {
    let a = try makeAllocator(pages: 1 << 15, cpus: 2)
    let start = a.freePageCount
    var held: [PFN] = []
    // Enough order-0 allocations to refill the pcp many times, then free in two orders.
    for _ in 0..<3000 { held.append(try #require(a.allocPages(order: 0, gfp: .kernel))) }
    #expect(Set(held).count == held.count)
    for p in held.prefix(1500) { a.freePages(p, order: 0) }
    for p in held.suffix(1500).reversed() { #expect(a.putPage(p)) }
    #expect(a.freePageCount == start)
    for _ in 0..<10_000 {
      let p = try #require(a.allocPages(order: 0, gfp: .kernel))
      a.freePages(p, order: 0)
    }
    #expect(a.freePageCount == start)
    #expect(a.badPageCount == 0)
    try a.verify()
  }

  @Test func badOrder0FreesAreStillCaught() throws {
    let a = try makeAllocator(pages: 1 << 15, cpus: 2)
    let start = a.freePageCount

    // Double free: reported, lists intact.
    let p = try #require(a.allocPages(order: 0, gfp: .kernel))
    a.freePages(p, order: 0)
    a.freePages(p, order: 0)
    #expect(a.badPageCount == 1)
    #expect(a.badPageReports.last?.kind == .doubleFree)

    // A flag checked at free: reported and quarantined.
    let q = try #require(a.allocPages(order: 0, gfp: .kernel))
    a.setPageFlags(q, .locked)
    a.freePages(q, order: 0)
    #expect(a.badPageCount == 2)
    #expect(a.isQuarantined(q))

    // HWPoison at order 0: kept off the lists without a report.
    let h = try #require(a.allocPages(order: 0, gfp: .kernel))
    a.setPageFlags(h, .hwpoison)
    a.freePages(h, order: 0)
    #expect(a.badPageCount == 2)
    #expect(a.isQuarantined(h))

    // Still referenced: not freed until the last put.
    let r = try #require(a.allocPages(order: 0, gfp: .kernel))
    a.getPage(r)
    a.freePages(r, order: 0)
    #expect(a.refcount(of: r) == 1)
    #expect(a.putPage(r))

    #expect(a.freePageCount == start - 2)
    #expect(a.quarantinedPageCount == 2)
    try a.verify()
  }

  @Test func splitPagesFreedOneByOne() throws {
    let a = try makeAllocator(pages: 1 << 15, cpus: 2)
    let start = a.freePageCount
    let p = try #require(a.allocPages(order: 5, gfp: .kernel))
    a.splitPage(p, order: 5)
    for i in 0..<32 { a.freePages(p + i, order: 0) }
    #expect(a.freePageCount == start)
    a.drainAllPages()
    #expect(a.pcpPageCount == 0)
    #expect(a.badPageCount == 0)
    try a.verify()
  }

  /// The zonelist walk after the preferred zone: Normal below its watermark falls back to
  /// DMA32; everything comes back.
  @Test func zonelistFallbackAfterThePreferredZone() throws {
    let a = try PageAllocator(
      configuration: .init(
        zones: [
          ZoneConfiguration(kind: .dma32, pfns: 0..<16384), ZoneConfiguration(kind: .normal, pfns: 16384..<32768),
        ], cpuCount: 2, backing: .none, sectionPages: 1 << 14))
    let start = a.freePageCount
    var held: [PFN] = []
    var fromDMA32 = 0
    while let p = a.allocPages(order: 0, gfp: [.kernel, .noWarn]) {
      held.append(p)
      if a.zoneKind(of: p) == .dma32 { fromDMA32 += 1 }
      if held.count > 40000 { break }
    }
    #expect(fromDMA32 > 0)
    #expect(held.count > 16384)
    // GFP_ATOMIC may dip below the min watermark (the second pass).
    let atomic = a.allocPages(order: 0, gfp: [.atomic, .noWarn])
    #expect(atomic != nil)
    if let atomic { held.append(atomic) }
    for p in held { a.freePages(p, order: 0) }
    #expect(a.freePageCount == start)
    #expect(a.badPageCount == 0)
    try a.verify()
  }
}

import Testing

@testable import PageAlloc
import PageAllocTestSupport
@testable import PageAllocViews

/// The /proc views against fixed expected text (mm/vmstat.c formats).
@Suite struct ProcViewsTests {
  /// 65536 pages (256 MiB), 2 CPUs, one order-4 Unmovable allocation:
  /// it claims the first max-order block (pageblocks 0 and 1 become Unmovable) and leaves
  /// one free block of each order 4...9 on the Unmovable lists.
  func allocatorWithOneOrder4() throws -> (PageAllocator, PFN) {
    let a = try PageAllocator(configuration: .normal(pages: 65536, cpuCount: 2, backing: .none))
    let p = try #require(a.allocPages(order: 4, gfp: .kernel))
    #expect(p == PFN(0))
    return (a, p)
  }

  @Test func buddyInfoFresh() throws {
    let a = try PageAllocator(configuration: .normal(pages: 65536, cpuCount: 2, backing: .none))
    #expect(
      a.buddyInfo()
        == "Node 0, zone   Normal      0      0      0      0      0      0      0      0      0      0     64 \n")
  }

  @Test func buddyInfoAfterSplit() throws {
    let (a, _) = try allocatorWithOneOrder4()
    #expect(
      a.buddyInfo()
        == "Node 0, zone   Normal      0      0      0      0      1      1      1      1      1      1     63 \n")
    try a.verify()
  }

  @Test func buddyInfoTwoZones() throws {
    let a = try PageAllocator(
      configuration: .init(
        zones: [
          ZoneConfiguration(kind: .dma32, pfns: PFN(0)..<PFN(32768)),
          ZoneConfiguration(kind: .normal, pfns: PFN(32768)..<PFN(36864)),
        ], cpuCount: 1, backing: .none))
    #expect(
      a.buddyInfo()
        == "Node 0, zone    DMA32      0      0      0      0      0      0      0      0      0      0     32 \n"
        + "Node 0, zone   Normal      0      0      0      0      0      0      0      0      0      0      4 \n")
  }

  @Test func pageTypeInfo() throws {
    let (a, _) = try allocatorWithOneOrder4()
    let expected = """
      Page block order: 9
      Pages per block:  512

      Free pages count per migrate type at order       0      1      2      3      4      5      6      7      8      9     10 
      Node    0, zone   Normal, type    Unmovable      0      0      0      0      1      1      1      1      1      1      0 
      Node    0, zone   Normal, type      Movable      0      0      0      0      0      0      0      0      0      0     63 
      Node    0, zone   Normal, type  Reclaimable      0      0      0      0      0      0      0      0      0      0      0 
      Node    0, zone   Normal, type   HighAtomic      0      0      0      0      0      0      0      0      0      0      0 
      Node    0, zone   Normal, type          CMA      0      0      0      0      0      0      0      0      0      0      0 
      Node    0, zone   Normal, type      Isolate      0      0      0      0      0      0      0      0      0      0      0 

      Number of blocks type     Unmovable      Movable  Reclaimable   HighAtomic          CMA      Isolate 
      Node 0, zone   Normal            2          126            0            0            0            0 

      """
    #expect(a.pageTypeInfo() == expected)
  }

  /// A list of 100000 blocks or more prints as `>100000`, the kernel's iteration cap.
  @Test func pageTypeInfoCapsAt100000() throws {
    let a = try PageAllocator(configuration: .normal(pages: 1 << 18, cpuCount: 1, backing: .none))
    // Claim every odd page: 131072 free order-0 blocks stay on the Movable list.
    var p = 1
    while p < 1 << 18 {
      #expect(a.claimFreeRange(p, count: 1) == .claimed)
      p += 2
    }
    let row = a.pageTypeInfo().split(separator: "\n").first { $0.contains("type      Movable") }
    #expect(
      row
        == "Node    0, zone   Normal, type      Movable >100000      0      0      0      0      0      0      0      0      0      0 "
    )
    #expect(a.buddyInfo().hasPrefix("Node 0, zone   Normal 131072      0 "))
    try a.verify()
  }

  /// Every zone kind of the node, as the kernel prints them: the kinds not configured as
  /// empty zones (their watermarks by the kernel's formula: 32 for Movable, 0 otherwise;
  /// nothing after protection), the Normal zone whole, its untouched pcps at high 0 and
  /// the vm stats threshold calculate_normal_threshold() gives 2 CPUs and 256 MiB.
  @Test func zoneInfo() throws {
    let (a, _) = try allocatorWithOneOrder4()
    let expected = """
      Node 0, zone      DMA
        pages free     0
              boost    0
              min      0
              low      0
              high     0
              promo    0
              spanned  0
              present  0
              managed  0
              cma      0
              protection: (0, 0, 0, 0, 0)
      Node 0, zone    DMA32
        pages free     0
              boost    0
              min      0
              low      0
              high     0
              promo    0
              spanned  0
              present  0
              managed  0
              cma      0
              protection: (0, 0, 0, 0, 0)
      Node 0, zone   Normal
        pages free     65520
              boost    0
              min      512
              low      640
              high     768
              promo    896
              spanned  65536
              present  65536
              managed  65536
              cma      0
              protection: (0, 0, 0, 0, 0)
            nr_free_pages 65520
            nr_free_pages_blocks 65024
            nr_free_cma  0
        pagesets
          cpu: 0
                    count:    0
                    high:     0
                    batch:    15
                    high_min: 320
                    high_max: 4096
        vm stats threshold: 12
          cpu: 1
                    count:    0
                    high:     0
                    batch:    15
                    high_min: 320
                    high_max: 4096
        vm stats threshold: 12
        node_unreclaimable:  0
        start_pfn:           0
        reserved_highatomic: 0
        free_highatomic:     0
      Node 0, zone  Movable
        pages free     0
              boost    0
              min      32
              low      32
              high     32
              promo    32
              spanned  0
              present  0
              managed  0
              cma      0
              protection: (0, 0, 0, 0, 0)
      Node 0, zone   Device
        pages free     0
              boost    0
              min      0
              low      0
              high     0
              promo    0
              spanned  0
              present  0
              managed  0
              cma      0
              protection: (0, 0, 0, 0, 0)

      """
    #expect(a.zoneInfo() == expected)
  }

  @Test func vmstat() throws {
    let (a, p) = try allocatorWithOneOrder4()
    a.freePages(p, order: 4)
    let expected = """
      nr_free_pages 65536
      nr_free_pages_blocks 65536
      nr_free_cma 0
      pgalloc_dma 0
      pgalloc_dma32 0
      pgalloc_normal 16
      pgalloc_movable 0
      pgalloc_device 0
      pgfree 16
      unevictable_pgs_cleared 0
      nr_unstable 0

      """
    #expect(a.vmstat() == expected)
    try a.verify()
  }

  /// PGALLOC and PGFREE count pages once: a pcp refill and a pcp drain do not count again.
  @Test func vmstatCountsPcpTrafficOnce() throws {
    let a = try PageAllocator(configuration: .normal(pages: 65536, cpuCount: 1, backing: .none))
    var pages: [PFN] = []
    for _ in 0..<100 { pages.append(try #require(a.allocPages(order: 0, gfp: .kernel))) }
    for p in pages { a.freePages(p, order: 0) }
    a.drainAllPages()
    let v = a.vmstat()
    #expect(v.contains("pgalloc_normal 100\n"))
    #expect(v.contains("pgfree 100\n"))
    #expect(v.contains("nr_free_pages 65536\n"))
  }

  @Test func infoWorkloadsLeaveConsistentState() throws {
    for w in InfoWorkload.allCases {
      let a = try PageAllocator(configuration: .normal(pages: 1 << 16, cpuCount: 2, backing: .none))
      let live = w.run(on: a, seed: 7)
      try a.verify()
      #expect(a.allocatedPageCount == live.reduce(0) { $0 + (1 << $1.order) })
      let map = FragmentationMap(allocator: a)
      #expect(map.cells.count == 128)
      #expect(map.freePagesPerOrder.reduce(0, +) == a.freePageCount)
      let svg = map.svg(title: "test \(w.rawValue)")
      #expect(svg.hasPrefix("<?xml"))
      #expect(svg.hasSuffix("</svg>\n"))
      if w == .fragment {
        // 15 of 16 allocated pages freed, none above order 3 (only the pages left below
        // the low watermark, never allocated, are in larger blocks).
        #expect(map.unusableFreeIndex(order: 4) > 0.95)
        #expect(map.cells.filter(\.isFragmented).count > 100)
      }
    }
  }
}

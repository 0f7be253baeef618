import PageAlloc
import PageAllocStress
import Testing
import PageAllocTestSupport

/// `resetToBoot()`, which lets the API-sequence fuzzer run every input on one allocator:
/// after any history the allocator is indistinguishable from a new one.
@Suite struct ResetTests {
  @Test func resetGivesTheBootState() throws {
    let config = APISequence.fuzzConfiguration
    let a = try PageAllocator(configuration: config)
    let fresh = try PageAllocator(configuration: config)
    // A history that touches every kind of state: blocks held and split, pages on both
    // CPUs' pcp lists, pageblocks claimed for other types, bad frees (quarantine, a
    // hwpoisoned page, reports), fault injection on.
    var held: [PFN] = []
    for (i, gfp) in [GFP.kernel, .highUserMovable, [.kernel, .reclaimable], [.kernel, .dma]].enumerated() {
      for order in [0, 3, 9] {
        if let p = PageAllocator.withThreadCPU(i % 2, { a.allocPages(order: order, gfp: gfp) }) {
          if order == 3 { a.splitPage(p, order: 3) }
          held.append(p)
        }
      }
    }
    let q = try #require(a.allocPages(order: 0, gfp: .kernel))
    a.setPageFlags(q, .hwpoison)
    a.freePages(q, order: 0)
    let r = try #require(a.allocPages(order: 0, gfp: .kernel))
    a.setPageFlags(r, .locked)
    a.freePages(r, order: 0)
    a.freePages(held[0], order: 0)
    a.freePages(held[0], order: 0)
    a.setFaultInjection(FaultInjection(probability: 100))
    #expect(a.badPageCount > 0 && a.quarantinedPageCount == 2 && a.hwpoisonedPageCount == 1)

    a.resetToBoot()
    try a.verify()
    #expect(a.zoneStatistics() == fresh.zoneStatistics())
    #expect(blocks(a.freeBlocks()) == blocks(fresh.freeBlocks()))
    #expect(a.pcpBlocks().isEmpty)
    #expect(a.badPageCount == 0 && a.badPageReports.isEmpty && a.allocationFailureCount == 0)
    #expect(a.quarantinedPageCount == 0 && a.hwpoisonedPageCount == 0)
    for p in a.pfnSpan {
      #expect(a.migrateType(of: p) == fresh.migrateType(of: p))
      #expect(a.refcount(of: p) == 0 && a.pageFlags(of: p) == [] && !a.isQuarantined(p), "\(p)")
    }
    // Fault injection is off again.
    #expect(a.allocPages(order: 0, gfp: .kernel) != nil)
  }
}

@testable import PageAlloc
import Testing
import PageAllocTestSupport

/// The named shapes of the core's raw memory (pcp list indices, zonelists, the pcp slot)
/// and the typed results built on them (VerificationError.kind, ZoneStatistics equality).
@Suite struct CoreShapeTests {
  @Test func pcpListIndicesCoverEveryListOnce() {
    var seen = Set<Int>()
    for order in 0...PageGeometry.maxOrder where pcpAllowedOrder(order) {
      for mt in 0..<MigrateType.pcpTypes {
        let pindex = orderToPindex(mt, order)
        #expect((0..<PCPList.count).contains(pindex))
        #expect(pindexToOrder(pindex) == order)
        let fresh = seen.insert(pindex).inserted
        if order <= PageGeometry.costlyOrder { #expect(fresh) }
      }
    }
    #expect(seen == Set(0..<PCPList.count))
    #expect(orderToPindex(MigrateType.movable.rawValue, PageGeometry.pageblockOrder) == PCPList.thpMovable)
    #expect(orderToPindex(MigrateType.unmovable.rawValue, PageGeometry.pageblockOrder) == PCPList.thp)
    #expect(orderToPindex(MigrateType.reclaimable.rawValue, PageGeometry.pageblockOrder) == PCPList.thp)
  }

  @Test func zoneKindCountAndPcpSlot() {
    #expect(ZoneKind.count == ZoneKind.allCases.count)
    #expect(MemoryLayout<PerCPUPages>.size <= PageAllocator.pcpSlotBytes)
    #expect(PageAllocator.pcpSlotBytes < PageAllocator.pcpStride)
  }

  @Test func zonelistsWalkHighestZoneFirst() throws {
    let a = try PageAllocator(
      configuration: .init(
        zones: [
          .init(kind: .dma, pfns: 0..<4096), .init(kind: .dma32, pfns: 4096..<8192),
          .init(kind: .normal, pfns: 8192..<16384),
        ], backing: .none, sectionPages: 4096))
    #expect(Array(a.zonelist(for: ZoneKind.movable.rawValue)) == [2, 1, 0])
    #expect(Array(a.zonelist(for: ZoneKind.normal.rawValue)) == [2, 1, 0])
    #expect(Array(a.zonelist(for: ZoneKind.dma32.rawValue)) == [1, 0])
    #expect(Array(a.zonelist(for: ZoneKind.dma.rawValue)) == [0])
    #expect(Array(a.zonelist(for: ZoneKind.normal.rawValue, from: 1)) == [1, 0])
    #expect(a.zonelist(for: ZoneKind.dma32.rawValue).preferred == 1)
  }

  @Test func verificationErrorsSayWhichInvariantBroke() throws {
    let a = try makeAllocator(pages: 4096)
    // A wrong nr_free.
    a.zones[0].lists[listIndex(10, MigrateType.movable.rawValue)].count += 1
    #expect { try a.verify() } throws: { ($0 as? VerificationError)?.kind == .accounting }
    a.zones[0].lists[listIndex(10, MigrateType.movable.rawValue)].count -= 1
    // A free block with a reference.
    let head = a.freeBlocks()[0].pfn
    a.memMap.presentRecord(head.value).pointee.refcount.store(1, ordering: .relaxed)
    #expect { try a.verify() } throws: { ($0 as? VerificationError)?.kind == .freeList }
    a.memMap.presentRecord(head.value).pointee.refcount.store(0, ordering: .relaxed)
    // A page inside a free block with flags.
    a.memMap.presentRecord(head.value + 1).pointee.flags.store(PG.locked, ordering: .relaxed)
    #expect { try a.verify() } throws: { ($0 as? VerificationError)?.kind == .pageState }
    a.memMap.presentRecord(head.value + 1).pointee.flags.store(0, ordering: .relaxed)
    try a.verify()
    // The message is the one printed before kinds existed; other structures default to
    // .external.
    #expect(VerificationError(message: "x").kind == .external)
    #expect(VerificationError(message: "x", kind: .overlap).description == "verify: x")
  }

  @Test func zoneStatisticsCompareEveryField() throws {
    let a = try makeAllocator(pages: 4096)
    let s = a.zoneStatistics()[0]
    #expect(s == a.zoneStatistics()[0])
    var t = s
    t.pagesets[0].high += 1
    #expect(s != t)
    t = s
    t.watermarkLow += 1
    #expect(s != t)
    #expect(Set([s, s]).count == 1)
  }
}

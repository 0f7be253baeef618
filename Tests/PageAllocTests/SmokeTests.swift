import PageAlloc
import Testing

@Suite struct SmokeTests {
  @Test func allocSplitFreeRoundTrip() throws {
    let a = try PageAllocator(
      configuration: .init(
        zones: [ZoneConfiguration(kind: .normal, pfns: 0..<65536)], cpuCount: 2, backing: .none,
        sectionPages: 1 << 15))
    let before = a.freePageCount
    let head = try #require(a.allocPages(order: 9, gfp: .kernel))
    #expect(a.refcount(of: head) == 1)
    #expect(a.refcount(of: head + 1) == 0)
    a.splitPage(head, order: 9)
    #expect(a.refcount(of: head + 511) == 1)
    a.freeContigRange(head, count: 512)
    #expect(a.freePageCount == before)
    #expect(a.badPageCount == 0)
    try a.verify()
  }
}

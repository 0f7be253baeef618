import PageAlloc
import Testing
import PageAllocTestSupport

/// The README's usage example, verbatim, so it keeps compiling and working.
@Suite struct ReadmeExampleTests {
  @Test func usageExample() throws {
    // One node with one Normal zone of 256 MiB, two per-CPU page sets, memory from a memfd.
    let a = try PageAllocator(configuration: .init(
        zones: [ZoneConfiguration(kind: .normal, pfns: 0..<65536)],
        cpuCount: 2, backing: .memfd, sectionPages: 1 << 15))

    // A 2 MiB block (order 9), split into 512 order-0 pages, each with its own reference.
    let head = a.allocPages(order: 9, gfp: .kernel)!
    a.splitPage(head, order: 9)
    let bytes = a.address(of: head + 3)!          // the 4 KiB page at pfn head+3
    bytes.storeBytes(of: 42, as: UInt64.self)

    // Free all 512 pages the series' way: one order-9 chunk onto the per-CPU list.
    a.freeContigRange(head, count: 512)

    // Order-0 pages through the per-CPU lists; a compound page; a frozen (refcount 0) block.
    let p = a.allocPages(order: 0, gfp: [.kernel, .zero])!
    a.putPage(p)
    let thp = a.allocPages(order: 9, gfp: [.highUserMovable, .comp])!
    a.putPage(thp)
    let cma = a.allocFrozenPages(order: 4, gfp: .kernel)!
    a.freeContigFrozenRange(cma, count: 16)

    a.drainAllPages()
    try a.verify()                 // walks every list and record; throws on a broken invariant
    #expect(a.freeBlockCounts().reduce(0) { $0 + $1 } > 0)
    #expect(a.badPageCount == 0)
    #expect(a.freePageCount == a.managedPageCount)
  }
}

import PageAlloc
import Testing
import PageAllocTestSupport

/// The README's usage examples, verbatim but for `print`, which becomes `#expect`, so they
/// keep compiling and working.
@Suite struct ReadmeExampleTests {
  @Test func handleExample() throws {
    // A pool of 256 MiB: one Normal zone of 65536 pages, memory from a memfd.
    let pool = try PageAllocator(configuration: .normal(pages: 65536))

    var page = try pool.allocate()  // one 4 KiB page
    page.withMutableBytes { $0.storeBytes(of: 42, toByteOffset: 0, as: UInt64.self) }
    #expect(try #require(pool.address(of: page.pfn)).load(as: UInt64.self) == 42)
    page.free()

    var run = try pool.allocate(order: 9).split()  // 2 MiB as 512 order-0 pages
    let buffer = run.extract(first: 16)  // 16 of them kept apart
    run.free()  // 496 pages, freed as 5 aligned chunks
    buffer.free()

    do {
      let big = try pool.allocate(order: 10)
      #expect(big.pageCount == 1024)
    } catch {
      Issue.record("allocation failed: \(error.reason)")
    }  // big is dropped here: its pages are free

    #expect(pool.freePageCount == pool.managedPageCount)
    #expect(pool.badPageCount == 0)
    try pool.verify()
  }

  @Test func usageExample() throws {
    // One node with one Normal zone of 256 MiB, two per-CPU page sets, memory from a memfd.
    let a = try PageAllocator(
      configuration: .init(
        zones: [ZoneConfiguration(kind: .normal, pfns: 0..<65536)],
        cpuCount: 2, backing: .memfd, sectionPages: 1 << 15))

    // A 2 MiB block (order 9), split into 512 order-0 pages, each with its own reference.
    let head = a.allocPages(order: 9, gfp: .kernel)!
    a.splitPage(head, order: 9)
    let bytes = a.address(of: head + 3)!  // the 4 KiB page at pfn head+3
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
    try a.verify()  // walks every list and record; throws on a broken invariant
    #expect(a.freeBlockCounts().reduce(0) { $0 + $1 } > 0)
    #expect(a.badPageCount == 0)
    #expect(a.freePageCount == a.managedPageCount)
  }
}

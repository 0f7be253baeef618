import Testing

@testable import PageAlloc
import PageAllocTestSupport

/// The owned-page API: PageBlock and PageRun handles, AllocationFailure, allocateContiguous,
/// and the span forms of the bulk calls. Every test ends with the allocator whole again
/// (all pages free, no bad-page report) and `verify()` clean.
@Suite struct PageHandleTests {
  /// Every page back, nothing reported, invariants hold.
  private func expectWhole(_ a: PageAllocator, sourceLocation: SourceLocation = #_sourceLocation) throws {
    a.drainAllPages()
    #expect(a.freePageCount == a.managedPageCount, sourceLocation: sourceLocation)
    #expect(a.badPageCount == 0, "\(a.badPageReports)", sourceLocation: sourceLocation)
    try a.verify()
  }

  @Test(arguments: [0, 1, 3, 9, 10])
  func splitThenFreeRestoresTheFreeCount(order: Int) throws {
    let a = try makeAllocator(pages: 1 << 14)
    let start = a.freePageCount
    let block = try a.allocate(order: order)
    #expect(block.order == order && block.pageCount == 1 << order && !block.isCompound)
    #expect(a.refcount(of: block.pfn) == 1)
    #expect(a.freePageCount == start - (1 << order))
    let run = block.split()
    #expect(run.count == 1 << order)
    for i in 0..<run.count { #expect(a.refcount(of: run.start + i) == 1) }
    run.free()
    #expect(a.freePageCount == start)
    try expectWhole(a)
  }

  @Test func freeFreesTheBlockWhole() throws {
    let a = try makeAllocator()
    let start = a.freePageCount
    let block = try a.allocate(order: 4)
    let pfn = block.pfn
    block.free()
    #expect(a.freePageCount == start)
    #expect(a.refcount(of: pfn) == 0)
    try expectWhole(a)
  }

  @Test func droppedHandlesFreeThemselves() throws {
    let a = try makeAllocator()
    let start = a.freePageCount
    do {
      let block = try a.allocate(order: 3)
      #expect(a.freePageCount == start - 8)
      #expect(block.pfns.count == 8)
    }
    #expect(a.freePageCount == start)
    _ = try a.allocate(order: 5)  // dropped at once
    #expect(a.freePageCount == start)
    do {
      var run = try a.allocate(order: 6).split()
      let part = run.extract(first: 10)
      #expect(part.count == 10 && run.count == 54)
      #expect(a.freePageCount == start - 64)
    }
    #expect(a.freePageCount == start)
    // A compound block dropped: freed whole.
    do {
      let thp = try a.allocate(order: 9, gfp: [.kernel, .comp])
      #expect(thp.isCompound == true)
    }
    #expect(a.freePageCount == start)
    try expectWhole(a)
  }

  @Test func extractThenTwoFrees() throws {
    let a = try makeAllocator()
    let start = a.freePageCount
    var run = try a.allocate(order: 9).split()
    let first = run.start
    let head = run.extract(first: 100)
    #expect(head.start == first && head.count == 100)
    #expect(run.start == first + 100 && run.count == 412)
    head.free()
    #expect(a.freePageCount == start - 412)
    #expect(a.refcount(of: first) == 0 && a.refcount(of: first + 100) == 1)
    run.free()
    #expect(a.freePageCount == start)
    try expectWhole(a)
  }

  @Test func extractEverythingLeavesAnEmptyRun() throws {
    let a = try makeAllocator()
    let start = a.freePageCount
    var run = try a.allocate(order: 2).split()
    let all = run.extract(first: 4)
    #expect(run.isEmpty && run.count == 0)
    #expect(all.count == 4)
    run.free()  // nothing
    #expect(a.freePageCount == start - 4)
    all.free()
    #expect(a.freePageCount == start)
    try expectWhole(a)
  }

  @Test func relinquishThenThePFNAPI() throws {
    let a = try makeAllocator()
    let start = a.freePageCount
    // A block: freePages.
    let p = try a.allocate(order: 3).relinquish()
    #expect(a.refcount(of: p) == 1)
    #expect(a.freePageCount == start - 8)
    a.freePages(p, order: 3)
    #expect(a.freePageCount == start)
    // A run: freeContigRange.
    let r = try a.allocate(order: 7).split().relinquish()
    #expect(r.count == 128)
    #expect(a.freePageCount == start - 128)
    a.freeContigRange(r.lowerBound, count: r.count)
    #expect(a.freePageCount == start)
    // A block relinquished, split by the PFN API, freed page by page.
    let q = try a.allocate(order: 1).relinquish()
    a.splitPage(q, order: 1)
    a.putPage(q)
    a.putPage(q + 1)
    #expect(a.freePageCount == start)
    try expectWhole(a)
  }

  @Test func adoptPFNAllocations() throws {
    let a = try makeAllocator()
    let start = a.freePageCount
    do {
      let p = try #require(a.allocPages(order: 4, gfp: .kernel))
      let block = PageBlock(unsafeAdopting: p, order: 4, in: a)
      #expect(block.pfn == p && !block.isCompound)
    }
    #expect(a.freePageCount == start)
    do {
      let p = try #require(a.allocPages(order: 2, gfp: [.kernel, .comp]))
      let block = PageBlock(unsafeAdopting: p, order: 2, in: a)
      #expect(block.isCompound == true)
    }
    #expect(a.freePageCount == start)
    do {
      let p = try #require(a.allocPages(order: 5, gfp: .kernel))
      a.splitPage(p, order: 5)
      var run = PageRun(unsafeAdopting: p..<(p + 32), in: a)
      run.extract(first: 31).free()
    }
    #expect(a.freePageCount == start)
    try expectWhole(a)
  }

  @Test func referencesTakenOnAHandlesPagesOutliveIt() throws {
    let a = try makeAllocator()
    let start = a.freePageCount
    let run = try a.allocate(order: 4).split()
    let kept = run.start + 5
    a.getPage(kept)
    run.free()
    #expect(a.freePageCount == start - 1)
    #expect(a.refcount(of: kept) == 1)
    a.putPage(kept)
    try expectWhole(a)
  }

  // MARK: Bytes

  @Test func bytesWrittenThroughABlockReadBackThroughAddress() throws {
    let a = try makeAllocator(backing: .memfd)
    var block = try a.allocate(order: 2)
    block.withMutableBytes { span in
      #expect(span.byteCount == 4 * 4096)
      span.storeBytes(of: 0x1122_3344_5566_7788, toByteOffset: 3 * 4096 + 8, as: UInt64.self)
    }
    block.withUnsafeMutableBytes { buf in
      #expect(buf.count == 4 * 4096)
      buf.storeBytes(of: 0xAB, toByteOffset: 4096, as: UInt8.self)
    }
    let page3 = try #require(a.address(of: block.pfn + 3))
    #expect(page3.load(fromByteOffset: 8, as: UInt64.self) == 0x1122_3344_5566_7788)
    let page1 = try #require(a.address(of: block.pfn + 1))
    #expect(page1.load(as: UInt8.self) == 0xAB)
    // And the other way: written through address(of:), read through the span.
    page1.storeBytes(of: 99, toByteOffset: 100, as: UInt32.self)
    let read = block.withBytes { $0.unsafeLoad(fromByteOffset: 4096 + 100, as: UInt32.self) }
    #expect(read == 99)
    // The pages a run was split from keep their bytes.
    var run = block.split()
    let again = run.withBytes { $0.unsafeLoad(fromByteOffset: 3 * 4096 + 8, as: UInt64.self) }
    #expect(again == 0x1122_3344_5566_7788)
    run.withMutableBytes { span in
      #expect(span.byteCount == 4 * 4096)
      span.storeBytes(of: 5, toByteOffset: 2 * 4096, as: UInt16.self)
    }
    #expect(try #require(a.address(of: run.start + 2)).load(as: UInt16.self) == 5)
    let n = run.withUnsafeMutableBytes { $0.count }
    #expect(n == 4 * 4096)
    run.free()
    try expectWhole(a)
  }

  @Test func zeroedBlocksReadZero() throws {
    let a = try makeAllocator(backing: .memfd)
    do {
      var dirty = try a.allocate(order: 1)
      dirty.withMutableBytes { span in
        for i in stride(from: 0, to: span.byteCount, by: 8) {
          span.storeBytes(of: UInt64.max, toByteOffset: i, as: UInt64.self)
        }
      }
    }
    let clean = try a.allocate(order: 1, gfp: [.kernel, .zero])
    let sum = clean.withBytes { span in
      var s = 0
      for i in 0..<span.byteCount { s += Int(span.unsafeLoad(fromByteOffset: i, as: UInt8.self)) }
      return s
    }
    #expect(sum == 0)
    clean.free()
    try expectWhole(a)
  }

  @Test func byteAccessWithoutMemoryTraps() async {
    let block = await #expect(processExitsWith: .failure, observing: [\.standardErrorContent]) {
      let a = try PageAllocator(configuration: .normal(pages: 4096, cpuCount: 1, backing: .none))
      let b = try a.allocate()
      b.withUnsafeMutableBytes { _ in }
    }
    let text = String(decoding: block?.standardErrorContent ?? [], as: UTF8.self)
    #expect(text.contains("PageBlock has no bytes: the allocator's backing is .none"))
    let run = await #expect(processExitsWith: .failure, observing: [\.standardErrorContent]) {
      let a = try PageAllocator(configuration: .normal(pages: 4096, cpuCount: 1, backing: .none))
      let r = try a.allocate(order: 1).split()
      _ = r.withBytes { $0.byteCount }
    }
    let runText = String(decoding: run?.standardErrorContent ?? [], as: UTF8.self)
    #expect(runText.contains("PageRun has no bytes: the allocator's backing is .none"))
  }

  @Test func splittingACompoundBlockTraps() async {
    let result = await #expect(processExitsWith: .failure, observing: [\.standardErrorContent]) {
      let a = try PageAllocator(configuration: .normal(pages: 4096, cpuCount: 1, backing: .none))
      let thp = try a.allocate(order: 3, gfp: [.kernel, .comp])
      thp.split().free()
    }
    let text = String(decoding: result?.standardErrorContent ?? [], as: UTF8.self)
    #expect(text.contains("compound page"))
  }

  @Test func extractingNothingTraps() async {
    await #expect(processExitsWith: .failure) {
      let a = try PageAllocator(configuration: .normal(pages: 4096, cpuCount: 1, backing: .none))
      var r = try a.allocate(order: 2).split()
      r.extract(first: 0).free()
    }
    await #expect(processExitsWith: .failure) {
      let a = try PageAllocator(configuration: .normal(pages: 4096, cpuCount: 1, backing: .none))
      var r = try a.allocate(order: 2).split()
      r.extract(first: 5).free()
    }
  }

  @Test func adoptingAFreePageTraps() async {
    await #expect(processExitsWith: .failure) {
      let a = try PageAllocator(configuration: .normal(pages: 4096, cpuCount: 1, backing: .none))
      _ = PageBlock(unsafeAdopting: 100, order: 0, in: a)
    }
  }

  #if DEBUG
    @Test func debugBuildsTrapWhenTheAllocatorDiesBeforeItsHandles() async {
      let result = await #expect(processExitsWith: .failure, observing: [\.standardErrorContent]) {
        var a: PageAllocator? = try PageAllocator(configuration: .normal(pages: 4096, cpuCount: 1, backing: .none))
        // Handles that ended (relinquished, split, freed) are not counted; one is left.
        let p = try a!.allocate().relinquish()
        PageBlock(unsafeAdopting: p, order: 0, in: a!).split().free()
        let kept = try a!.allocate()
        a = nil
        _ = kept.relinquish()
      }
      let text = String(decoding: result?.standardErrorContent ?? [], as: UTF8.self)
      #expect(text.contains("while 1 PageBlock/PageRun handle(s) still own its pages"))
      #expect(text.contains("the allocator must outlive its handles"))
    }
  #endif

  // MARK: Failures

  @Test func exhaustingMemoryThrowsBelowWatermark() throws {
    let a = try makeAllocator(pages: 1 << 13)
    var held: [PFN] = []
    var failure: AllocationFailure?
    while failure == nil {
      do {
        held.append(try a.allocate().relinquish())
      } catch {
        failure = error
      }
    }
    let f = try #require(failure)
    #expect(f.order == 0)
    #expect(f.gfp == .kernel)
    #expect(f.reason == .belowWatermark)
    #expect(f.description.contains("order:0") && f.description.contains("GFP_KERNEL"))
    #expect(held.count > (1 << 13) / 2)
    a.freePagesBulk(held.sorted().span)
    try expectWhole(a)
  }

  @Test func fragmentedMemoryThrowsNoFreeBlock() throws {
    let a = try makeAllocator(pages: 1 << 13)
    let held = a.allocPagesBulk(count: 1 << 13, gfp: .kernel).sorted()
    // Free every odd page: half the memory is free again, but every free page's buddy is
    // held, so nothing merges above order 0.
    for p in held where p.value & 1 == 1 { a.freePages(p, order: 0) }
    a.drainAllPages()
    var failure: AllocationFailure?
    do {
      _ = try a.allocate(order: 9)
    } catch {
      failure = error
    }
    let f = try #require(failure)
    #expect(f.order == 9)
    #expect(f.reason == .noFreeBlock)
    // Order 0 still works.
    try a.allocate().free()
    a.freePagesBulk(held.filter { $0.value & 1 == 0 })
    try expectWhole(a)
  }

  @Test func injectedFailureSaysSo() throws {
    let a = try makeAllocator()
    a.setFaultInjection(FaultInjection(probability: 100, times: 1))
    var failure: AllocationFailure?
    do {
      _ = try a.allocate(order: 2, gfp: .atomic)
    } catch {
      failure = error
    }
    #expect(failure == AllocationFailure(order: 2, gfp: .atomic, reason: .injected))
    #expect(a.faultInjection?.injected == 1)
    try a.allocate(order: 2, gfp: .atomic).free()  // times: 1 used up
    a.setFaultInjection(nil)

    // An injected failure seen by the PFN API does not colour a later real failure.
    a.setFaultInjection(FaultInjection(probability: 100))
    #expect(a.allocPages(order: 0, gfp: .kernel) == nil)
    a.setFaultInjection(nil)
    var second: AllocationFailure?
    do {
      _ = try a.allocate(order: 11)
    } catch {
      second = error
    }
    #expect(second?.reason == .invalidOrder)
    a.setFaultInjection(FaultInjection(probability: 100))
    #expect(a.allocPages(order: 0, gfp: .kernel) == nil)
    a.setFaultInjection(nil)
    var held: [PFN] = []
    var third: AllocationFailure?
    while third == nil {
      do {
        held.append(try a.allocate(order: 10).relinquish())
      } catch {
        third = error
      }
    }
    #expect(third?.reason != .injected)
    #expect(third?.order == 10)
    for p in held { a.freePages(p, order: 10) }
    try expectWhole(a)
  }

  @Test(arguments: [-1, 11, 64])
  func invalidOrderThrows(order: Int) throws {
    let a = try makeAllocator()
    #expect(throws: AllocationFailure(order: order, gfp: .kernel, reason: .invalidOrder)) {
      _ = try a.allocate(order: order)
    }
    try expectWhole(a)
  }

  // MARK: allocateContiguous

  @Test func allocateContiguousSucceeds() throws {
    let a = try makeAllocator()
    let start = a.freePageCount
    var run = try a.allocateContiguous(pages: 100)
    #expect(run.count == 100)
    #expect(run.start.value % 100 == 0)
    for i in 0..<100 { #expect(a.refcount(of: run.start + i) == 1) }
    #expect(a.freePageCount == start - 100)
    let part = run.extract(first: 36)
    part.free()
    #expect(a.freePageCount == start - 64)
    run.free()
    #expect(a.freePageCount == start)
    do {
      let dropped = try a.allocateContiguous(pages: 1024, gfp: [.kernel, .zero])
      #expect(dropped.start.value % 1024 == 0)
    }
    #expect(a.freePageCount == start)
    try expectWhole(a)
  }

  @Test func allocateContiguousFailures() throws {
    let a = try makeAllocator(pages: 1 << 13)
    #expect(throws: ContigRangeError.invalidCount(0)) { _ = try a.allocateContiguous(pages: 0) }
    #expect(throws: ContigRangeError.invalidCount(-5)) { _ = try a.allocateContiguous(pages: -5) }
    #expect(throws: ContigRangeError.invalidGFP(.comp)) {
      _ = try a.allocateContiguous(pages: 16, gfp: [.kernel, .comp])
    }
    #expect(throws: ContigRangeError.invalidGFP(.high)) { _ = try a.allocateContiguous(pages: 16, gfp: .atomic) }
    #expect(throws: ContigRangeError.noFreeRange(pages: 1 << 14, gfp: .kernel)) {
      _ = try a.allocateContiguous(pages: 1 << 14)
    }
    // Every candidate (a multiple of 64) has a page in use: no migration, so no range.
    let held = stride(from: 0, to: 1 << 13, by: 64).map { PFN($0) }
    for p in held { try a.allocContigRange(p..<(p + 1), gfp: .kernel) }
    let err = ContigRangeError.noFreeRange(pages: 64, gfp: .kernel)
    #expect(throws: err) { _ = try a.allocateContiguous(pages: 64) }
    #expect(err.description.contains("64 pages"))
    // 63 pages at 63 * 63 = 3969 fall between the held pages 3968 and 4032.
    let run = try a.allocateContiguous(pages: 63)
    #expect(run.start == 3969)
    run.free()
    for p in held { a.freeContigRange(p, count: 1) }
    try expectWhole(a)
  }

  // MARK: Bulk span forms

  @Test func bulkIntoAnOutputSpanAndFreeFromASpan() throws {
    let a = try makeAllocator()
    let start = a.freePageCount
    var appended = 0
    let pfns = [PFN](capacity: 50) { out in
      appended = a.allocPagesBulk(count: 80, gfp: .kernel, into: &out)  // stops when full
    }
    #expect(appended == 50 && pfns.count == 50)
    #expect(Set(pfns).count == 50)
    #expect(pfns.allSatisfy { a.refcount(of: $0) == 1 })
    var more = [PFN](capacity: 100) { out in
      #expect(a.allocPagesBulk(count: 30, gfp: .kernel, into: &out) == 30)  // stops at count
    }
    #expect(more.count == 30)
    more += a.allocPagesBulk(count: 20, gfp: .kernel)
    #expect(more.count == 50)
    #expect(a.freePageCount == start - 100)
    a.freePagesBulk(pfns.span)
    let sorted = more.sorted()
    a.freePagesBulk(sorted.span.extracting(0..<25))
    a.freePagesBulk(sorted.span.extracting(25...))
    #expect(a.freePageCount == start)
    #expect(a.allocPagesBulk(count: 0, gfp: .kernel).isEmpty)
    a.freePagesBulk([PFN]().span)
    try expectWhole(a)
  }

  @Test func bulkStopsWhenMemoryRunsOut() throws {
    let a = try makeAllocator(pages: 1 << 13)
    let all = a.allocPagesBulk(count: 1 << 14, gfp: .kernel)
    #expect(all.count < 1 << 13)
    #expect(all.count > (1 << 13) / 2)
    a.freePagesBulk(all.span)
    try expectWhole(a)
  }
}

import Testing

@testable import PageAlloc
import PageAllocTestSupport
@testable import PageAllocVMalloc
@testable import PageAllocStress

/// `pagealloc stress` with the vmalloc extension.
@Suite struct StressVMallocTests {
  func config(threads: Int, ops: Int, seed: UInt64, faultPercent: Int = 2, weight: Int = 8) -> StressConfiguration {
    StressConfiguration(
      threads: threads, operations: ops, seed: seed, faultPercent: faultPercent, verifyEvery: 4_000, pages: 1 << 15,
      extensions: [VMallocStressExtension(weight: weight)])
  }

  @Test func extensionAsksForMemfdBacking() {
    #expect(config(threads: 1, ops: 1, seed: 1).allocatorConfiguration.backing == .memfd)
    #expect(StressConfiguration(threads: 1, operations: 1).allocatorConfiguration.backing == .none)
    var c = config(threads: 1, ops: 1, seed: 1)
    c.backing = .anonymous
    #expect(c.allocatorConfiguration.backing == .anonymous)
  }

  @Test(arguments: [1, 2])
  func shortRunPassesAndLeaksNothing(threads: Int) throws {
    let c = config(threads: threads, ops: 16_000, seed: 21)
    let e = c.extensions[0] as! VMallocStressExtension
    let r = try StressEngine.run(c)
    #expect(r.passed, "\(r)")
    #expect(r.pagesLeaked == 0)
    #expect(r.badPages == 0)
    #expect(r.verifyError == nil)
    let rep = try #require(r.extensionReports.first)
    #expect(rep.name == "vmalloc")
    #expect(rep.failures.isEmpty, "\(rep.failures)")
    for k in ["vmalloc", "vfree-bulk", "vfree-per-page", "vmap", "vunmap", "vzalloc", "aligned", "odd-size", "checks"] {
      #expect((rep.counts[k] ?? 0) > 0, "no \(k): \(rep.formatted)")
    }
    #expect(rep.counts["vmalloc"]! == rep.counts["vfree-bulk"]! + rep.counts["vfree-per-page"]!)
    #expect(rep.counts["vmap"]! == rep.counts["vunmap"]!)
    #expect((rep.counts["pages-checked"] ?? 0) >= rep.counts["pages-mapped"]!)
    #expect((r.operationsByKind["ext:vmalloc"] ?? 0) > 0)
    let vm = try #require(e.vmalloc)
    #expect(vm.areaCount == 0)
    #expect(vm.vmallocPageCount == 0)
    #expect(vm.chargedMappings == 0)
    try vm.verify()
    try vm.allocator.verify()
    #expect(vm.allocator.freePageCount == vm.allocator.managedPageCount)
  }

  @Test func sameSeedSameSingleThreadRunWithVMalloc() throws {
    let r1 = try StressEngine.run(config(threads: 1, ops: 12_000, seed: 77))
    let r2 = try StressEngine.run(config(threads: 1, ops: 12_000, seed: 77))
    #expect(r1.passed, "\(r1)")
    #expect(r1.failuresInjected > 0)
    #expect(r1.deterministicFields == r2.deterministicFields)
    #expect(r1.extensionReports == r2.extensionReports)
    let r3 = try StressEngine.run(config(threads: 1, ops: 12_000, seed: 78))
    #expect(r3.passed)
    #expect(r3.extensionReports != r1.extensionReports)
  }

  @Test func injectedFailuresLeakNothing() throws {
    let c = config(threads: 2, ops: 12_000, seed: 9, faultPercent: 40, weight: 20)
    let e = c.extensions[0] as! VMallocStressExtension
    let r = try StressEngine.run(c)
    #expect(r.passed, "\(r)")
    #expect(r.pagesLeaked == 0)
    let rep = try #require(r.extensionReports.first)
    #expect((rep.counts["vmalloc-failed"] ?? 0) > 0, "\(rep.formatted)")
    #expect(e.vmalloc?.areaCount == 0)
  }

  @Test func unbackedAllocatorFailsTheRunCleanly() throws {
    let a = try PageAllocator(configuration: StressConfiguration(threads: 1, operations: 1).allocatorConfiguration)
    let r = StressEngine.run(config(threads: 1, ops: 2_000, seed: 1), on: a)
    #expect(!r.passed)
    #expect(r.pagesLeaked == 0)
    #expect(r.extensionReports.first?.failures.first?.contains("memfd") == true, "\(r.extensionReports)")
    #expect(r.operationsByKind["ext:vmalloc"] == nil)
  }

  /// A corrupted page (written through another address) is reported as a failure.
  @Test func patternMismatchIsAFailure() throws {
    let a = try PageAllocator(configuration: .normal(pages: 1 << 14, cpuCount: 2, backing: .memfd))
    let e = VMallocStressExtension()
    try e.prepare(a, threads: 1)
    var rng = StressRandom(seed: 5)
    let s = e.states[0]
    while s.vmallocs.isEmpty || s.vmaps.isEmpty { e.step(a, thread: 0, random: &rng) }
    let v = s.vmallocs[0]
    let pages = try #require(e.vmalloc?.pages(of: v.address))
    a.address(of: pages[pages.count - 1])!.storeBytes(of: 0xdead, as: UInt64.self)
    let m = s.vmaps[0]
    a.address(of: m.pages[0])!.storeBytes(of: 0xbeef, toByteOffset: 2048, as: UInt64.self)
    e.finish(a, thread: 0)
    let rep = e.report()
    #expect(rep.failures.count == 2, "\(rep.failures)")
    #expect(rep.failures.contains { $0.hasPrefix("vmalloc(") && $0.contains("dead") })
    #expect(rep.failures.contains { $0.hasPrefix("vmap page 0") && $0.contains("beef") })
    #expect(rep.counts["failures"] == 2)
    #expect(e.vmalloc?.areaCount == 0)
    a.drainAllPages()
    #expect(a.freePageCount == a.managedPageCount)
    try a.verify()
  }
}

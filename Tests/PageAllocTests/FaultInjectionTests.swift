import Glibc
import Testing

@testable import PageAlloc
import PageAllocTestSupport

@Suite struct FaultInjectionTests {
  @Test("probability 0 and 100, times, interval")
  func basics() throws {
    let a = try makeAllocator(pages: 1 << 13, cpus: 2)
    a.setFaultInjection(FaultInjection(probability: 100, times: 3))
    var fails = 0
    for _ in 0..<10 { if let p = a.allocPages(order: 0, gfp: .kernel) { a.freePages(p, order: 0) } else { fails += 1 } }
    #expect(fails == 3)
    #expect(a.faultInjection?.injected == 3)
    a.setFaultInjection(FaultInjection(probability: 100, interval: 4))
    var pattern: [Bool] = []
    for _ in 0..<8 {
      let p = a.allocPages(order: 0, gfp: .kernel)
      pattern.append(p == nil)
      if let p { a.freePages(p, order: 0) }
    }
    #expect(pattern == [false, false, false, true, false, false, false, true])
    a.setFaultInjection(FaultInjection(probability: 0))
    #expect(a.allocPages(order: 0, gfp: .kernel).map { a.freePages($0, order: 0) } != nil)
    a.setFaultInjection(nil)
    try a.verify()
  }

  @Test("filters: min order, .noFail, highmem, direct reclaim, .noWarn")
  func filters() throws {
    let a = try makeAllocator(pages: 1 << 13, cpus: 2)
    func fails(_ f: FaultInjection, order: Int, _ gfp: GFP) -> Bool {
      a.setFaultInjection(f)
      defer { a.setFaultInjection(nil) }
      guard let p = a.allocPages(order: order, gfp: gfp) else { return true }
      a.freePages(p, order: order)
      return false
    }
    let all = FaultInjection(probability: 100)
    #expect(fails(all, order: 0, .kernel))
    #expect(!fails(all, order: 0, [.kernel, .noFail]), "__GFP_NOFAIL is never failed")
    #expect(!fails(FaultInjection(probability: 100, minOrder: 1), order: 0, .kernel))
    #expect(fails(FaultInjection(probability: 100, minOrder: 1), order: 1, .kernel))
    let highmem = FaultInjection(probability: 100, ignoreHighmem: true)
    #expect(!fails(highmem, order: 0, .highUserMovable))
    #expect(!fails(highmem, order: 0, [.kernel, .highmem]), "any __GFP_HIGHMEM, as ignore-gfp-highmem")
    #expect(fails(highmem, order: 0, .kernel))
    let wait = FaultInjection(probability: 100, ignoreDirectReclaim: true)
    #expect(!fails(wait, order: 0, .kernel), "GFP_KERNEL may sleep: ignore-gfp-wait")
    #expect(fails(wait, order: 0, .atomic))
    let nowarn = FaultInjection(probability: 100, ignoreNoWarn: true)
    #expect(!fails(nowarn, order: 0, [.kernel, .noWarn]))
    #expect(fails(nowarn, order: 0, .kernel))
    try a.verify()
  }

  @Test("space: failures wait until the page budget is used")
  func space() throws {
    let a = try makeAllocator(pages: 1 << 13, cpus: 2)
    a.setFaultInjection(FaultInjection(probability: 100, space: 10))
    var ok = 0
    while let p = a.allocPages(order: 1, gfp: .kernel) {
      ok += 1
      a.freePages(p, order: 1)
    }
    #expect(ok == 4, "10 > 2, 8 > 2, 6 > 2, 4 > 2, then 2 > 2 fails")
    a.setFaultInjection(nil)
  }

  @Test("a seed reproduces the same failures", arguments: [1 as UInt64, 42, 0xdead_beef])
  func reproducible(seed: UInt64) throws {
    func run() throws -> [Bool] {
      let a = try makeAllocator(pages: 1 << 13, cpus: 2)
      a.setFaultInjection(FaultInjection(probability: 30, seed: seed))
      return (0..<200).map { _ in
        guard let p = a.allocPages(order: 0, gfp: .kernel) else { return true }
        a.freePages(p, order: 0)
        return false
      }
    }
    let r = try run()
    #expect(r == (try run()))
    #expect(r.contains(true) && r.contains(false))
  }
}

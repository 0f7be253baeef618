import Glibc
import Testing

@testable import PageAlloc
import PageAllocTestSupport
@testable import PageAllocVMalloc

@Suite struct VMallocFaultTests {
  @Test("high orders failing: vmalloc builds from order 0")
  func buildsFromOrderZero() throws {
    let (a, v) = try makeVMalloc(pages: 1 << 13)
    a.setFaultInjection(FaultInjection(probability: 100, minOrder: 1))
    let p = try #require(v.vmalloc(700 * 4096))
    #expect(try #require(a.faultInjection).injected >= 1)
    #expect(v.pages(of: p)?.count == 700)
    p.storeBytes(of: 7, as: Int.self)
    a.setFaultInjection(nil)
    v.vfree(p)
    #expect(a.freePageCount == a.managedPageCount)
    try a.verify()
    try v.verify()
  }

  @Test("every allocation failing: nil, nothing held")
  func allFail() throws {
    let (a, v) = try makeVMalloc(pages: 1 << 13)
    a.setFaultInjection(FaultInjection(probability: 100))
    for n in [1, 2, 3, 100, 1000] { #expect(v.vmalloc(n * 4096, gfp: [.kernel, .noWarn]) == nil) }
    a.setFaultInjection(nil)
    #expect(a.freePageCount == a.managedPageCount)
    #expect(v.windowMappings().count == 1)
    try v.verify()
  }

  static let cases: [(Int, UInt64)] = [1, 5, 20, 50, 90].flatMap { p in [1 as UInt64, 7, 1234].map { (p, $0) } }

  @Test("injected failures at many rates and seeds: no leaked page, no leaked mapping", arguments: cases)
  func noLeaks(probability: Int, seed: UInt64) throws {
    let (a, v) = try makeVMalloc(pages: 1 << 13)
    let free = a.freePageCount
    a.setFaultInjection(FaultInjection(probability: probability, interval: probability > 50 ? 1 : 2, seed: seed))
    var random = TestRNG(seed: seed)
    var live: [UnsafeMutableRawPointer] = []
    var nils = 0
    for _ in 0..<150 {
      let rng = random.next()
      if !live.isEmpty && rng % 3 == 0 {
        v.vfree(live.remove(at: Int(rng / 3 % UInt64(live.count))), freePath: rng & 8 == 0 ? .bulk : .perPage)
      } else {
        let before = a.allocatedPageCount
        let mapsBefore = v.windowMappings().count
        let n = 1 + Int(rng >> 8 % 600)
        if let p = v.vmalloc(n * 4096, gfp: [.kernel, .noWarn]) {
          #expect(v.pages(of: p)?.count == n)
          p.storeBytes(of: n, as: Int.self)
          live.append(p)
        } else {
          nils += 1
          #expect(a.allocatedPageCount == before, "a failed vmalloc holds no page")
          #expect(v.windowMappings().count == mapsBefore, "a failed vmalloc leaves no mapping")
        }
      }
      try v.verify()
    }
    a.setFaultInjection(nil)
    for p in live { v.vfree(p) }
    #expect(a.freePageCount == free)
    #expect(v.windowMappings().count == 1)
    #expect(v.chargedMappings == 0)
    try a.verify()
    try v.verify()
    if probability >= 50 { #expect(nils > 0) }
  }
}

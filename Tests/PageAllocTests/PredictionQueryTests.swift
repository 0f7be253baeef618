import Testing

@testable import PageAlloc
import PageAllocTestSupport

/// The prediction's questions (PageAllocator+Prediction.swift) answer what the real
/// functions then do, on random states: each query is checked against the function it
/// mirrors, so that a change to one fails here until the other follows.
@Suite(.serialized) struct PredictionQueryTests {
  /// A random history on two CPUs: allocations of the three pcp types at orders 0-3, 9
  /// and a few larger ones (the unmovable and reclaimable ones claim and steal), and frees
  /// of half of them, which fill the pcp lists.
  func randomState(_ seed: UInt64, cpus: Int = 2) throws -> (PageAllocator, [(PFN, Int)]) {
    let a = try makeAllocator(pages: 1 << 15, cpus: cpus)
    var rng = TestRNG(seed: seed)
    var live: [(PFN, Int)] = []
    let types: [GFP] = [.kernel, .highUserMovable, [.kernel, .reclaimable]]
    for _ in 0..<3000 {
      PageAllocator.setThreadCPU(rng.below(cpus))
      if rng.next() % 100 < 60 || live.isEmpty {
        let r = rng.next() % 20
        let order = r == 0 ? 9 : r == 1 ? Int(4 + rng.next() % 4) : Int(rng.next() % 4)
        if let p = a.allocPages(order: order, gfp: types[Int(rng.next() % 3)].union(.noWarn)) {
          live.append((p, order))
        }
      } else {
        let i = Int(rng.next() % UInt64(live.count))
        a.freePages(live[i].0, order: live[i].1)
        live[i] = live[live.count - 1]
        live.removeLast()
      }
    }
    PageAllocator.setThreadCPU(nil)
    return (a, live)
  }

  @Test(arguments: [1 as UInt64, 2, 3])
  func peekRmqueueIsWhatRmqueueTakes(seed: UInt64) throws {
    let (a, _) = try randomState(seed)
    var rng = TestRNG(seed: seed &+ 100)
    var sources: Set<String> = []
    for _ in 0..<400 {
      let order = rng.next() % 4 == 0 ? Int(rng.next() % 11) : Int(rng.next() % 4)
      let mt = rng.below(MigrateType.pcpTypes)
      let noFragment = rng.next() % 2 == 0
      let stealing = rng.next() % 5 == 0
      let peek = a.peekRmqueue(zone: 0, order: order, migrateType: mt, noFragment: noFragment, stealing: stealing)
      var mode: RmqueueMode = stealing ? .steal : .normal
      a.zones.pointee.lock.lock()
      let got = a.rmqueue(a.zones, order, mt, noFragment ? .noFragment : [], &mode)
      if let got {
        a.memMap.presentRecord(got).pointee.flags.store(PG.word(flags: 0, order: order), ordering: .relaxed)
      }
      a.zones.pointee.lock.unlock()
      #expect(peek?.pfn == got, "order \(order) type \(mt) noFragment \(noFragment) stealing \(stealing)")
      if let peek { sources.insert("\(peek.source)") }
    }
    #expect(sources.contains("smallest"))
    try a.verify()
  }

  @Test(arguments: [1 as UInt64, 2, 3])
  func peekDrainIsWhatFreePcppagesBulkDrains(seed: UInt64) throws {
    let (a, _) = try randomState(seed)
    var rng = TestRNG(seed: seed &+ 200)
    let sink = TraceBuffer()
    a.setTraceSink(sink)
    for cpu in 0..<2 {
      while a.pcpTuning(cpu: cpu, zone: 0).count > 0 {
        let pages = 1 + rng.below(200)
        let pindex = rng.below(PageAllocator.pcpListCount)
        let peek = a.peekDrain(cpu: cpu, zone: 0, pages: pages, pindex: pindex, pieceSize: .max)
        let first = a.peekDrainNext(
          cpu: cpu, zone: 0, pindex: PageAllocator.drainFirstList(from: pindex), continuing: false)
        sink.removeAll()
        let pcp = a.pcp(cpu * a.zoneCount)
        pcp.pointee.lock.lock()
        a.freePcppagesBulk(a.zones, pages, pcp, pindex)
        pcp.pointee.lock.unlock()
        let drained = sink.snapshot.filter { $0.kind == .pagePcpuDrain }.map { [$0.pfn!.value, $0.order] }
        #expect(peek.blocks.map { [$0.pfn, $0.order] } == drained, "cpu \(cpu) pages \(pages) from list \(pindex)")
        #expect(peek.unmet == 0)
        #expect(first.map { [$0.pfn, $0.order] } == drained.first)
      }
    }
    try a.verify()
  }

  @Test func peekRefillCountIsNrPcpAllocAndChangesNothing() throws {
    let (a, _) = try randomState(7)
    for cpu in 0..<2 {
      for order in [0, 1, 2, 3, 9] {
        let before = a.pcpTuning(cpu: cpu, zone: 0)
        let n = a.peekRefillCount(cpu: cpu, zone: 0, order: order)
        #expect(a.pcpTuning(cpu: cpu, zone: 0) == before)
        let pcp = a.pcp(cpu * a.zoneCount)
        pcp.pointee.lock.lock()
        let real = a.nrPcpAlloc(pcp, a.zones, order)
        pcp.pointee.lock.unlock()
        #expect(n == real, "cpu \(cpu) order \(order)")
        a.shadowRestoreTuning(cpu: cpu, zone: 0, before)
      }
    }
  }

  /// A free the kernel did not drain after teaches that its high was above its count: the
  /// model's high rises to count + 1 (unseen pages included, at most high_max); a higher
  /// high stays.
  @Test func learntHighBoundStopsTheSameDrain() throws {
    let (a, _) = try randomState(11)
    let t = a.pcpTuning(cpu: 0, zone: 0)
    a.shadowSetTuning(cpu: 0, zone: 0, high: t.highMin, highMin: t.highMin, highMax: t.highMax, batch: t.batch)
    let extra = 5
    a.shadowLearnHighAbove(cpu: 0, zone: 0, extraCount: extra)
    let learnt = a.pcpTuning(cpu: 0, zone: 0)
    #expect(learnt.high == max(t.highMin, min(t.count + extra + 1, t.highMax)))
    a.shadowSetTuning(cpu: 0, zone: 0, high: t.highMax, highMin: t.highMin, highMax: t.highMax, batch: t.batch)
    a.shadowLearnHighAbove(cpu: 0, zone: 0, extraCount: extra)
    #expect(a.pcpTuning(cpu: 0, zone: 0).high == t.highMax)
  }

  /// Two allocators with the same history: one frees through the real path, the other
  /// through the shadow commit, which must predict the real drain exactly; the real
  /// drain is then applied to the shadow with shadowDrain, and the two stay equal.
  @Test(arguments: [1 as UInt64, 2])
  func shadowFreeDecidesAsTheRealFree(seed: UInt64) throws {
    let (real, live) = try randomState(seed)
    let (shadow, live2) = try randomState(seed)
    #expect(live.map(\.0) == live2.map(\.0))
    let sink = TraceBuffer()
    real.setTraceSink(sink)
    var rng = TestRNG(seed: seed &+ 300)
    var drains = 0
    for (p, order) in live {
      let cpu = rng.below(2)
      sink.removeAll()
      PageAllocator.withThreadCPU(cpu) { real.freePages(p, order: order) }
      let drained = sink.snapshot.filter { $0.kind == .pagePcpuDrain }
      // The shadow holds the block's pages as split order-0 pages, as a replay does.
      let pindex = PageAllocator.pcpIndex(order: order, migrateType: shadow.migrateType(of: p)!.rawValue)
      guard let r = shadow.shadowFreeToPcp(p.value, order: order, cpu: cpu) else {
        #expect(pindex == nil || shadow.migrateType(of: p) == .isolate)
        continue
      }
      #expect(r.pindex == pindex)
      var predicted: [[Int]] = []
      if r.toFree > 0 {
        predicted = shadow.peekDrain(cpu: cpu, zone: r.zone, pages: r.toFree, pindex: r.pindex).blocks.map {
          [$0.pfn, $0.order]
        }
      }
      #expect(predicted == drained.map { [$0.pfn!.value, $0.order] }, "free of \(p) order \(order)")
      for d in drained {
        #expect(shadow.shadowDrain(d.pfn!.value, order: d.order, migrateType: d.migrateType) != .alreadyFree)
        drains += 1
      }
    }
    #expect(drains > 0)
    #expect(Set(real.freeBlocks().map { "\($0.0)/\($0.1)" }) == Set(shadow.freeBlocks().map { "\($0.0)/\($0.1)" }))
    #expect(Set(real.pcpBlocks().map { "\($0.0)/\($0.1)" }) == Set(shadow.pcpBlocks().map { "\($0.0)/\($0.1)" }))
    try real.verify()
    try shadow.verify()
  }

  /// The shadow moves keep the model valid, whatever they are asked.
  @Test func shadowMovesKeepTheModelValid() throws {
    let (a, live) = try randomState(11)
    var rng = TestRNG(seed: 12)
    // Refills of free blocks onto pcp tails.
    for _ in 0..<200 {
      let blocks = a.freeBlocks()
      let (pfn, order) = blocks[rng.below(blocks.count)]
      let o = min(order, 3)
      let pindex = PageAllocator.pcpIndex(order: o, migrateType: rng.below(3))!
      #expect(a.shadowMoveToPcpTail(pfn.value, order: o, cpu: rng.below(2), pindex: pindex))
      #expect(
        a.pcpBlocks(cpu: 0, zone: 0, pindex: pindex).last == pfn.value
          || a.pcpBlocks(cpu: 1, zone: 0, pindex: pindex).last == pfn.value)
    }
    try a.verify()
    // Blocks moved between lists, pageblocks retyped, blocks drained.
    for _ in 0..<200 {
      let pcp = a.pcpBlocks()
      guard !pcp.isEmpty else { break }
      let (pfn, order) = pcp[rng.below(pcp.count)]
      switch rng.next() % 3 {
      case 0:
        let target = PageAllocator.pcpIndex(order: order, migrateType: rng.below(3))!
        let cpu = rng.below(2)
        let others = a.pcpBlocks(cpu: cpu, zone: 0, pindex: target).filter { $0 != pfn.value }
        let position: PageAllocator.PcpPosition =
          switch rng.next() % 3 {
          case 0: .head
          case 1: .tail
          default: others.isEmpty ? .head : .after(others[rng.below(others.count)])
          }
        #expect(a.shadowMovePcpBlock(pfn.value, cpu: cpu, pindex: target, position: position))
        let now = a.pcpBlocks(cpu: cpu, zone: 0, pindex: target)
        switch position {
        case .head: #expect(now.first == pfn.value)
        case .tail: #expect(now.last == pfn.value)
        case .after(let prev): #expect(now[now.firstIndex(of: prev)! + 1] == pfn.value)
        }
      case 1:
        a.shadowSetPageblockType(pfn.value, rng.below(3))
      default:
        #expect(a.shadowDrain(pfn.value, order: order, migrateType: rng.below(3)) != .alreadyFree)
      }
    }
    try a.verify()
    // Frees of the live blocks through the shadow commit.
    for (p, order) in live { _ = a.shadowFreeToPcp(p.value, order: order, cpu: rng.below(2)) }
    try a.verify()
    a.drainAllPages()
    #expect(a.freePageCount == a.managedPageCount)
  }
}

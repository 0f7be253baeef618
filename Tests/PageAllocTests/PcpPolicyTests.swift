@testable import PageAlloc
import Testing
import PageAllocTestSupport

/// The free side of one per-CPU page set as mm/page_alloc.c runs it, written from the
/// kernel's semantics (free_frozen_page_commit, nr_pcp_high, nr_pcp_free,
/// free_pcppages_bulk, drain_pages_zone) for a zone above its high watermark with no
/// reclaim running, PCPF_FREE_HIGH_BATCH set (what every machine with a last-level cache
/// of more than 3 batches per CPU does). Lists hold block heads, newest first.
struct KernelPcpModel {
  let batch: Int
  let highMin: Int
  let highMax: Int
  var high: Int
  var count = 0
  var freeCount = 0
  var prevFreeHighOrder = false
  var lists = [[Int]](repeating: [], count: 14)

  init(_ s: PageSetStatistics) {
    batch = s.batch
    highMin = s.highMin
    highMax = s.highMax
    high = s.high
  }

  static func pindex(order: Int, mt: Int) -> Int { order <= 3 ? 3 * order + mt : 12 + (mt == 1 ? 1 : 0) }
  static func order(pindex: Int) -> Int { pindex >= 12 ? 9 : pindex / 3 }

  /// A block freed to this pcp; returns the block heads drained to the buddy, in order.
  mutating func free(_ pfn: Int, order: Int, mt: Int) -> [Int] {
    let pindex = Self.pindex(order: order, mt: mt)
    lists[pindex].insert(pfn, at: 0)
    count += 1 << order
    var freeHigh = false
    if (1...3).contains(order) {
      freeHigh = freeCount >= batch + highMin / 2 && prevFreeHighOrder && count >= batch
      prevFreeHighOrder = true
    } else {
      prevFreeHighOrder = false
    }
    if freeCount < batch << 5 { freeCount += 1 << order }
    let h = nrPcpHigh(freeHigh)
    if count < h { return [] }
    var toFree = nrPcpFree(h, freeHigh)
    var drained: [Int] = []
    while toFree > 0 && count > 0 {
      let piece = min(toFree, batch)
      drained += bulk(piece, from: pindex)
      toFree -= piece
    }
    return drained
  }

  mutating func nrPcpHigh(_ freeHigh: Bool) -> Int {
    let h = min(max(high, highMin), highMax)
    high = h
    if h == 0 { return 0 }
    if freeHigh {
      high = max(h - (batch << 5), highMin)
      return 0
    }
    if highMin == highMax { return h }
    if count >= h {
      let need = freeCount + batch
      if high < need { high = min(max(need, highMin), highMax) }
    }
    return h
  }

  func nrPcpFree(_ h: Int, _ freeHigh: Bool) -> Int {
    if freeHigh { return min(count, batch << 5) }
    if h < batch { return 1 }
    return min(max(freeCount, batch), h - batch)
  }

  /// free_pcppages_bulk: from the list `pindex` on, round robin, each list oldest first
  /// until the count is used up.
  mutating func bulk(_ n: Int, from pindex: Int) -> [Int] {
    var left = min(n, count)
    var p = pindex - 1
    var out: [Int] = []
    while left > 0 {
      repeat { p = p == 13 ? 0 : p + 1 } while lists[p].isEmpty
      let order = Self.order(pindex: p)
      repeat {
        out.append(lists[p].removeLast())
        left -= 1 << order
        count -= 1 << order
      } while left > 0 && !lists[p].isEmpty
    }
    return out
  }

  /// drain_pages_zone: pieces of batch << 5 from list 0, until empty.
  mutating func drainAll() -> [Int] {
    var out: [Int] = []
    while count > 0 { out += bulk(min(count, batch << 5), from: 0) }
    return out
  }

  var blocks: [[Int]] {
    lists.indices.flatMap { i in lists[i].map { [$0, Self.order(pindex: i)] } }.sorted { $0[0] < $1[0] }
  }
}

/// The pcp policy the README promises: `high` tuned as nr_pcp_high() does, the oldest
/// blocks drained first, free_high after a burst of high-order frees, the trylock that
/// falls back to the zone lock, refills of nr_pcp_alloc() blocks, isolated pageblocks
/// never on a pcp list. Each compared with ``KernelPcpModel`` step by step, or with the
/// kernel's numbers. One CPU, unless the test is about several; a 1 GiB zone, so the
/// batch is 63 as on any real zone of that size or more (zone_batchsize()).
@Suite struct PcpPolicyTests {
  static let pages = 1 << 18

  /// `n` order-0 pages in use, taken as order-10 blocks and split (the rest of the last
  /// block stays in use too): the pcp is never touched, so it starts as the kernel's would
  /// (empty, high at high_min, no recent frees).
  func orderZeroPages(_ a: PageAllocator, _ n: Int, gfp: GFP = .highUserMovable) throws -> [Int] {
    var out: [Int] = []
    while out.count < n {
      let p = try #require(a.allocPages(order: 10, gfp: gfp))
      a.splitPage(p, order: 10)
      out += (p.value..<(p.value + 1024))
    }
    #expect(a.pcpPageCount == 0)
    return Array(out[..<n])
  }

  func pageset(_ a: PageAllocator) -> PageSetStatistics { a.zoneStatistics()[0].pagesets[0] }

  func drainedBlocks(_ t: TraceBuffer) -> [Int] {
    let out = t.snapshot.filter { $0.kind == .pagePcpuDrain }.map { $0.pfn!.value }
    t.removeAll()
    return out
  }

  /// 20000 order-0 frees in a scrambled order: after each, the pcp's count and high and the
  /// blocks drained (in drain order, from the mm_page_pcpu_drain events) are the model's.
  @Test func orderZeroFreesTuneHighAndDrainTheOldest() throws {
    let (a, t) = try makeTracedAllocator(pages: Self.pages)
    let pages = try orderZeroPages(a, 20000)
    var m = KernelPcpModel(pageset(a))
    #expect(m.batch == 63 && m.highMin == 1286)
    t.removeAll()
    var drains = 0
    var raised = false
    var lastHigh = m.high
    for i in 0..<pages.count {
      let p = pages[(i * 7919) % pages.count]
      a.putPage(PFN(p))
      let expected = m.free(p, order: 0, mt: MigrateType.movable.rawValue)
      let got = drainedBlocks(t)
      #expect(got == expected, "free \(i) of \(PFN(p)): drained")
      let s = pageset(a)
      #expect(s.count == m.count && s.high == m.high, "free \(i): count \(s.count) high \(s.high)")
      if !expected.isEmpty { drains += 1 }
      // The refills of the 20000 allocations already raised high (nr_pcp_alloc): count
      // only the raises the frees make (nr_pcp_high).
      if m.high > lastHigh { raised = true }
      lastHigh = m.high
      if got != expected || s.count != m.count || s.high != m.high { break }
    }
    // The run went through the interesting cases: several drains, and high raised by a free.
    #expect(drains >= 10 && raised)
    #expect(blocks(a.pcpBlocks()) == m.blocks)
    try a.verify()
  }

  /// Order-2 frees with nothing allocated in between: once the recent frees reach
  /// batch + high_min / 2 (and a batch is on the pcp), the next high-order free drains the
  /// whole pcp (free_high) and drops high back to high_min.
  @Test func aBurstOfHighOrderFreesDrainsEverything() throws {
    let a = try makeAllocator(pages: Self.pages)
    let pages = try orderZeroPages(a, 4096)
    var m = KernelPcpModel(pageset(a))
    var freeHighAt: Int?
    for i in 0..<(pages.count / 4) {
      let p = pages[i * 4]
      a.freeContigRange(PFN(p), count: 4)  // one order-2 chunk
      let drained = m.free(p, order: 2, mt: MigrateType.movable.rawValue)
      let s = pageset(a)
      #expect(s.count == m.count && s.high == m.high, "free \(i): count \(s.count) high \(s.high)")
      if !drained.isEmpty {
        freeHighAt = i
        break
      }
    }
    // Recent frees reach batch + high_min / 2 = 63 + 1286 / 2 = 706 after 177 frees of 4
    // pages: the 178th drains all 712 pages, long before count would reach high (1286).
    #expect(m.batch == 63 && m.highMin == 1286)
    #expect(freeHighAt == 177)
    #expect(a.pcpPageCount == 0)
    #expect(pageset(a).high == m.highMin)
    try a.verify()
  }

  /// nr_pcp_alloc(): an empty list refills with `batch` order-0 pages (63), and with
  /// max(batch >> order, 2) blocks at higher orders; the allocation takes one of them.
  @Test(arguments: [(0, 62), (1, 60), (2, 56), (3, 48), (9, 512)])
  func refillTakesTheKernelBatch(order: Int, leftOnThePcp: Int) throws {
    let a = try makeAllocator(pages: Self.pages)
    let p = try #require(a.allocPages(order: order, gfp: .highUserMovable))
    #expect(a.pcpPageCount == leftOnThePcp)
    #expect(a.pcpBlocks().allSatisfy { $0.order == order && $0.pfn != p })
    a.freePages(p, order: order)
    a.drainAllPages()
    #expect(a.freePageCount == a.managedPageCount)
  }

  /// A free or an allocation that finds the pcp lock taken (another context on the same
  /// CPU) goes to the zone lock instead: the block lands in the buddy, the allocation
  /// comes from the buddy, and the pcp list is untouched.
  @Test func trylockFailureFallsBackToTheBuddy() throws {
    let a = try makeAllocator(pages: Self.pages)
    let pages = try orderZeroPages(a, 8)
    let pcp = a.pcp(0)
    pcp.pointee.lock.lock()
    for p in pages { a.putPage(PFN(p)) }
    let q = a.allocPages(order: 0, gfp: .kernel)
    pcp.pointee.lock.unlock()
    #expect(a.pcpBlocks().isEmpty)
    #expect(q != nil)
    let free = Set(freePFNs(a))
    #expect(pages.allSatisfy { free.contains($0) || $0 == q?.value })
    #expect(a.badPageCount == 0)
    try a.verify()
    // With the lock free again, the same free goes to the pcp list.
    a.putPage(q!)
    #expect(blocks(a.pcpBlocks()) == [[q!.value, 0]])
  }

  @Test func drainAllPagesDrainsEveryCPU() throws {
    let a = try makeAllocator(pages: Self.pages, cpus: 3)
    let pages = try orderZeroPages(a, 30)
    for (i, p) in pages.enumerated() { PageAllocator.withThreadCPU(i % 3) { _ = a.putPage(PFN(p)) } }
    #expect(a.zoneStatistics()[0].pagesets.map(\.count) == [10, 10, 10])
    a.drainAllPages()
    #expect(a.zoneStatistics()[0].pagesets.map(\.count) == [0, 0, 0])
    #expect(a.pcpBlocks().isEmpty)
    #expect(a.freePageCount == a.managedPageCount - (1024 - 30))
    try a.verify()
  }

  /// A page of an isolated pageblock is freed straight to the buddy's Isolate list: a pcp
  /// list would hand it out again from under the isolation.
  @Test func isolatedPageblockFreesSkipThePcp() throws {
    let a = try makeAllocator(pages: Self.pages)
    let pages = try orderZeroPages(a, 1024)
    let pb = pages[0] & ~511
    let z = a.zones
    z.pointee.lock.lock()
    #expect(a.isolatePageblocksLocked(z, pb, pb + 512))
    z.pointee.lock.unlock()
    a.putPage(PFN(pb + 3))
    a.putPage(PFN(pb + 512 + 3))  // the next pageblock is not isolated
    #expect(blocks(a.pcpBlocks()) == [[pb + 512 + 3, 0]])
    #expect(a.zoneStatistics()[0].isolatedFreePages == 1)
    try a.verify()
  }

  // MARK: - Drain start, free_high batch, refill growth (the kernel behaviour the fidelity
  // work brought)

  /// free_pcppages_bulk starts at the list just freed to: the order-0 Movable free that
  /// takes the pcp to high drains the Movable list first, oldest first, and only then the
  /// Unmovable pages of list 0.
  @Test
  func aDrainStartsAtTheListJustFreedTo() throws {
    let (a, t) = try makeTracedAllocator(pages: Self.pages)
    let movable = try orderZeroPages(a, 2048)
    let unmovable = try orderZeroPages(a, 200, gfp: .kernel)
    var m = KernelPcpModel(pageset(a))
    for p in unmovable {
      a.putPage(PFN(p))
      #expect(m.free(p, order: 0, mt: MigrateType.unmovable.rawValue).isEmpty)
    }
    t.removeAll()
    var expected: [Int] = []
    for p in movable where expected.isEmpty {
      a.putPage(PFN(p))
      expected = m.free(p, order: 0, mt: MigrateType.movable.rawValue)
    }
    #expect(expected.first == movable.first)
    #expect(drainedBlocks(t) == expected)
  }

  /// With PCPF_FREE_HIGH_BATCH (set on any machine with a last-level cache of more than
  /// three batches per CPU), free_high also needs a batch of pages on the pcp: after a
  /// burst of frees, a few high-order frees stay on the list.
  @Test
  func freeHighWaitsForABatchOnThePcp() throws {
    let a = try makeAllocator(pages: Self.pages)
    let pages = try orderZeroPages(a, 1024)
    var m = KernelPcpModel(pageset(a))
    // A burst of 1000 order-0 frees (recent frees 1000, below high), then a drain.
    for p in pages[24...] {
      a.putPage(PFN(p))
      #expect(m.free(p, order: 0, mt: MigrateType.movable.rawValue).isEmpty)
    }
    a.drainAllPages()
    _ = m.drainAll()
    // Three order-2 frees: 12 pages on the pcp, fewer than a batch: no drain.
    for i in 0..<3 {
      a.freeContigRange(PFN(pages[i * 4]), count: 4)
      #expect(m.free(pages[i * 4], order: 2, mt: MigrateType.movable.rawValue).isEmpty)
    }
    #expect(m.count == 12)
    #expect(a.pcpPageCount == 12)
  }

  /// nr_pcp_alloc() raises high by a batch on every refill while the zone is healthy.
  @Test
  func aRefillRaisesHigh() throws {
    let a = try makeAllocator(pages: Self.pages)
    let before = pageset(a)
    _ = try #require(a.allocPages(order: 0, gfp: .highUserMovable))
    #expect(pageset(a).high == min(before.highMin + before.batch, before.highMax))
  }

  /// drain_pages_zone() starts at list 0 on every call: Unmovable order-0 pages first.
  @Test
  func drainAllStartsAtListZero() throws {
    let (a, t) = try makeTracedAllocator(pages: Self.pages)
    let movable = try orderZeroPages(a, 20)
    let unmovable = try orderZeroPages(a, 20, gfp: .kernel)
    var m = KernelPcpModel(pageset(a))
    for p in movable {
      a.putPage(PFN(p))
      _ = m.free(p, order: 0, mt: 1)
    }
    for p in unmovable {
      a.putPage(PFN(p))
      _ = m.free(p, order: 0, mt: 0)
    }
    t.removeAll()
    a.drainAllPages()
    #expect(drainedBlocks(t) == m.drainAll())
  }
}

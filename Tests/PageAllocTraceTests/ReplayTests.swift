import Glibc
import Synchronization
import Testing

@testable import PageAlloc
import PageAllocTestSupport
import _PageAllocUtilities
@testable import PageAllocTrace
@testable import PageAllocViews

/// The real Linux 6.18 capture, kept in Tests/Fixtures (see its README).
let realTracePath: String = {
  let file = "\(#filePath)"
  let root = file.firstRange(of: "/Tests/").map { String(file[..<$0.lowerBound]) } ?? "."
  return root + "/Tests/Fixtures/kmem-6.18-swiftc-tar.trace.gz"
}()

/// Replays text held in memory.
func replay(_ text: String, name: String = "t.trace", zone: Range<PFN>? = nil, strict: Bool = false) throws(ReplayError)
  -> (report: ReplayReport, allocator: PageAllocator)
{
  let bytes = Array(text.utf8)
  let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: max(bytes.count, 1), alignment: 8)
  defer { buf.deallocate() }
  buf.copyBytes(from: bytes)
  return try TraceReplay.run(
    bytes: UnsafeRawBufferPointer(rebasing: buf[0..<bytes.count]), name: name,
    options: .init(zone: zone, strict: strict))
}

func writeTemp(_ name: String, _ bytes: [UInt8]) -> String {
  let path = "/tmp/pagealloc-views-\(getpid())-\(name)"
  let f = fopen(path, "w")!
  _ = bytes.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, f) }
  fclose(f)
  return path
}

/// The free pfns of a window starting at `start` (`free[i]`: pfn start + i is free).
func pfnsMarked(_ free: [Bool], start: Int) -> [Int] { free.indices.filter { free[$0] }.map { $0 + start } }

@Suite(.serialized) struct ReplayTests {
  // MARK: - claimFreeRange

  @Test func claimSplitsABuddyBlock() throws {
    let a = try PageAllocator(configuration: .normal(pages: 4096, cpuCount: 1, backing: .none))
    #expect(a.claimFreeRange(1029, count: 3) == .claimed)
    for p in 1029..<1032 { #expect(a.refcount(of: PFN(p)) == 1) }
    try a.verify()
    #expect(a.freePageCount == 4093)
    // The rest of the split block is canonical around the hole.
    var free = [Bool](repeating: true, count: 4096)
    for p in 1029..<1032 { free[p] = false }
    #expect(blocks(a.freeBlocks()) == blocks(canonicalBlocks(free: pfnsMarked(free, start: 0), sectionPages: 1024)))
    // Freed page by page, everything merges back.
    for p in 1029..<1032 { a.freePages(PFN(p), order: 0) }
    a.drainAllPages()
    #expect(a.buddyInfo().hasSuffix("     4 \n"))
    try a.verify()
  }

  @Test func claimTakesBlocksOffPcpLists() throws {
    let a = try PageAllocator(configuration: .normal(pages: 1 << 16, cpuCount: 2, backing: .none))
    PageAllocator.setThreadCPU(1)
    defer { PageAllocator.setThreadCPU(nil) }
    var pages: [PFN] = []
    for _ in 0..<40 { pages.append(try #require(a.allocPages(order: 0, gfp: .kernel))) }
    let big = try #require(a.allocPages(order: 3, gfp: .kernel))
    for p in pages { a.freePages(p, order: 0) }
    a.freePages(big, order: 3)
    #expect(a.pcpPageCount > 0)
    // A page from the middle of a pcp list, and one page of an order-3 pcp block.
    #expect(a.claimFreeRange(pages[20].value, count: 1) == .claimed)
    #expect(a.claimFreeRange(big.value + 5, count: 1) == .claimed)
    try a.verify()
    #expect(!a.pcpBlocks().contains { $0.pfn == pages[20] || $0.pfn == big })
    a.freePages(pages[20], order: 0)
    a.freePages(big + 5, order: 0)
    a.drainAllPages()
    #expect(a.freePageCount == 1 << 16)
    #expect(a.freeBlockCounts()[10] == 64)
    try a.verify()
  }

  @Test func claimOfABusyPageChangesNothing() throws {
    let a = try PageAllocator(configuration: .normal(pages: 4096, cpuCount: 1, backing: .none))
    let p = try #require(a.allocPages(order: 4, gfp: .kernel))
    let before = a.freeBlocks()
    #expect(a.claimFreeRange(p.value + 8, count: 16) == .busy)
    #expect(a.claimFreeRange(4090, count: 16) == .outOfRange)
    #expect(blocks(a.freeBlocks()) == blocks(before))
    try a.verify()
  }

  /// Claims race with allocations and frees on two other threads (all three started
  /// together, verify() running until they finish); the state stays valid, and each side
  /// really ran: claims went through, and so did allocations.
  @Test func claimUnderConcurrency() throws {
    let a = try PageAllocator(configuration: .normal(pages: 1 << 15, cpuCount: 2, backing: .none))
    let claims = Atomic<Int>(0)
    let allocs = Atomic<Int>(0)
    let (errors, _) = try withVerifier(a, workers: 3) { t in
      guard t < 2 else {
        var rng = TestRNG(seed: 99)
        for _ in 0..<5000 {
          let n = 1 + rng.below(8)
          let p = rng.below((1 << 15) - n)
          if a.claimFreeRange(p, count: n) == .claimed {
            claims.wrappingAdd(1, ordering: .relaxed)
            a.freeContigRange(PFN(p), count: n)
          }
        }
        return
      }
      PageAllocator.withThreadCPU(t) {
        var rng = TestRNG(seed: UInt64(t + 10))
        var live: [(PFN, Int)] = []
        for _ in 0..<20000 {
          let order = rng.below(4)
          if live.count < 200 && rng.below(2) == 0, let p = a.allocPages(order: order, gfp: [.kernel, .noWarn]) {
            live.append((p, order))
            allocs.wrappingAdd(1, ordering: .relaxed)
          } else if let (p, o) = live.popLast() {
            a.freePages(p, order: o)
          }
        }
        for (p, o) in live { a.freePages(p, order: o) }
      }
    }
    #expect(errors == [])
    // Most of the zone is free most of the time: most claims find their pages free.
    #expect(claims.load(ordering: .relaxed) > 2500)
    #expect(allocs.load(ordering: .relaxed) > 10000)
    #expect(a.badPageCount == 0)
    a.drainAllPages()
    try a.verify()
    #expect(a.freePageCount == a.managedPageCount)
  }

  // MARK: - Round trip

  /// A random workload with a sink installed; its events, printed as ftrace lines and
  /// replayed into a fresh allocator, give the same free blocks. The workload uses every
  /// allocation and free entry point that traces (allocPages, allocFrozenPages,
  /// allocPagesBulk; freePages, putPage, freeContigRange, freePagesBulk, freeFrozenPages,
  /// freeContigFrozenRange): one that forgot an event would make the replay diverge.
  @Test(arguments: [1 as UInt64, 2, 3])
  func roundTripRandomWorkload(seed: UInt64) throws {
    let (a, sink) = try makeTracedAllocator(cpus: 2)
    defer { PageAllocator.setThreadCPU(nil) }
    var rng = TestRNG(seed: seed)
    var live: [(pfn: PFN, order: Int, frozen: Bool)] = []
    let types: [GFP] = [.kernel, .highUserMovable, [.kernel, .reclaimable]]
    for _ in 0..<6000 {
      PageAllocator.setThreadCPU(rng.below(2))
      let op = rng.next() % 100
      if op < 50 || live.isEmpty {
        let order = rng.next() % 8 == 0 ? Int(4 + rng.next() % 7) : Int(rng.next() % 4)
        let gfp = types[Int(rng.next() % 3)].union(.noWarn)
        switch op % 6 {
        case 0:
          var pages: [PFN] = []
          a.allocPagesBulk(count: 1 + Int(rng.next() % 8), gfp: gfp, into: &pages)
          live += pages.map { ($0, 0, false) }
        case 1:
          if let p = a.allocFrozenPages(order: order, gfp: gfp) { live.append((p, order, true)) }
        default:
          if let p = a.allocPages(order: order, gfp: gfp) { live.append((p, order, false)) }
        }
      } else {
        let i = Int(rng.next() % UInt64(live.count))
        let (p, order, frozen) = live[i]
        live[i] = live[live.count - 1]
        live.removeLast()
        if frozen {
          if op % 2 == 0 { a.freeContigFrozenRange(p, count: 1 << order) } else { a.freeFrozenPages(p, order: order) }
          continue
        }
        switch op % 5 {
        case 0 where order > 0:
          a.splitPage(p, order: order)
          a.freeContigRange(p, count: 1 << order)
        case 1 where order > 0:
          // Page by page, high half first.
          a.splitPage(p, order: order)
          for k in (0..<(1 << order)).reversed() { #expect(a.putPage(p + k)) }
        case 3 where order > 0:
          // freePagesBulk, high half first: two runs.
          a.splitPage(p, order: order)
          let half = 1 << (order - 1)
          a.freePagesBulk((half..<(2 * half)).map { p + $0 } + (0..<half).map { p + $0 })
        case 2:
          #expect(a.putPage(p))
        default:
          a.freePages(p, order: order)
        }
      }
    }
    a.setTraceSink(nil)
    #expect(a.badPageCount == 0)
    let events = sink.snapshot
    var text = "# tracer: nop\n#\n"
    for (i, e) in events.enumerated() { text += e.ftraceLine(timestamp: 100 + Double(i) * 1e-6) + "\n" }
    let (r, b) = try replay(text, zone: PFN(0)..<PFN(1 << 16), strict: true)
    a.drainAllPages()
    #expect(blocks(b.freeBlocks()) == blocks(a.freeBlocks()))
    #expect(b.freePageCount == a.freePageCount)
    let used = events.filter { ($0.kind == .pageAlloc && $0.pfn != nil) || $0.kind == .pageFree }.count
    #expect(r.eventsApplied == used)
    #expect(r.preallocatedPages == 0)
    #expect(r.anomalies.allSatisfy { $0.count == 0 })
    try b.verify()
  }

  // MARK: - The real trace

  /// The events of a kmem trace as a naive line splitter reads them, written here with
  /// String operations and nothing of `KmemTraceParser`: lines naming `mm_page_alloc:` or
  /// `mm_page_free:`, their `pfn=0x...` and `order=` fields, and their line numbers.
  static func naiveEvents(_ bytes: UnsafeRawBufferPointer) -> [(line: Int, free: Bool, pfn: Int, order: Int)] {
    let text = String(decoding: bytes, as: UTF8.self)
    var out: [(line: Int, free: Bool, pfn: Int, order: Int)] = []
    for (i, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
      let free: Bool
      guard let name = line.firstRange(of: ": mm_page_alloc: ") ?? line.firstRange(of: ": mm_page_free: ") else {
        continue
      }
      free = line[name].contains("free")
      func field(_ key: String) -> Substring? {
        guard let k = line[name.upperBound...].firstRange(of: " " + key) else { return nil }
        return line[k.upperBound...].prefix { $0 != " " }
      }
      guard let pfnText = field("pfn=0x"), let pfn = Int(pfnText, radix: 16), let orderText = field("order="),
        let order = Int(orderText)
      else { continue }
      out.append((i + 1, free, pfn, order))
    }
    return out
  }

  /// The Linux 6.18 capture, replayed: its figures pinned (the ones the PageAllocTrace
  /// article and the README quote), and the final state checked against an independent
  /// model of the replay semantics built from ``naiveEvents(_:)``: the pre-trace pages,
  /// the events applied, the double frees and their lines, and the free blocks (the
  /// canonical decomposition of the free set the model ends with).
  @Test func realTraceFigures() throws {
    let (r, a) = try TraceReplay.run(path: realTracePath)
    try a.verify()
    #expect(r.linesRead == 377476)
    #expect(r.linesIgnored == 177213)
    #expect(r.eventsParsed == 200263)
    #expect(r.eventsApplied == 200259)
    #expect(r.allocsApplied == 167330 && r.freesApplied == 32929)
    #expect(r.allocFailures == 0)
    #expect(r.preallocatedPages == 100)
    #expect(r.count(.allocBusy) == 0 && r.count(.outOfRange) == 0 && r.count(.malformed) == 0)
    #expect(r.count(.doubleFree) == 4)
    #expect(r.anomalies[1].kind == .doubleFree && r.anomalies[1].firstLines == [310610, 310611, 310612, 310613])
    #expect(r.zones.map(\.pfns) == [PFN(0x100400)..<PFN(0x16b000)])
    #expect(r.cpuCount == 2)
    #expect(r.buddyCounts == [[1240, 597, 396, 349, 312, 279, 163, 76, 39, 34, 217]])
    #expect(
      r.buddyInfo
        == "Node 0, zone   Normal   1240    597    396    349    312    279    163     76     39     34    217 \n")
    #expect(a.pcpPageCount == 0)

    // The independent model.
    let events = try TraceReplay.withFileBytes(path: realTracePath) { Self.naiveEvents($0) }
    #expect(events.count == 200263)
    let lo = events.map(\.pfn).min()! & ~1023
    let hi = (events.map { $0.pfn + (1 << $0.order) }.max()! + 1023) & ~1023
    #expect(PFN(lo)..<PFN(hi) == PFN(0x100400)..<PFN(0x16b000))
    var allocated = [Bool](repeating: false, count: hi - lo)
    var seen = [Bool](repeating: false, count: hi - lo)
    for e in events {
      for p in (e.pfn - lo)..<(e.pfn - lo + (1 << e.order)) where !seen[p] {
        seen[p] = true
        if e.free { allocated[p] = true }
      }
    }
    let pre = allocated.filter { $0 }.count
    var applied = 0
    var busy: [Int] = []
    var double: [Int] = []
    for e in events {
      let range = (e.pfn - lo)..<(e.pfn - lo + (1 << e.order))
      if !e.free {
        if range.contains(where: { allocated[$0] }) {
          busy.append(e.line)
          continue
        }
        for i in range { allocated[i] = true }
      } else {
        if range.contains(where: { !allocated[$0] }) {
          double.append(e.line)
          continue
        }
        for i in range { allocated[i] = false }
      }
      applied += 1
    }
    #expect(pre == 100)
    #expect(r.eventsApplied == applied)
    #expect(busy == [])
    #expect(double == [310610, 310611, 310612, 310613])
    let expected = canonicalBlocks(free: pfnsMarked(allocated.map { !$0 }, start: lo), sectionPages: 1024)
    #expect(blocks(a.freeBlocks()) == blocks(expected))
    var counts = [Int](repeating: 0, count: 11)
    for (_, order) in expected { counts[order] += 1 }
    #expect(r.buddyCounts == [counts])
  }

  // MARK: - Formats

  /// The same events as a trace file, trace-cmd report and perf script give the same
  /// replay.
  @Test func threeFormatsAgree() throws {
    let plain = """
      # tracer: nop
      #
      #           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION
                  bash-20222   [000] .....  2070.739071: mm_page_alloc: page=000000008a501c6b pfn=0x104722 order=0 migratetype=0 gfp_flags=GFP_KERNEL_ACCOUNT|__GFP_ZERO|__GFP_COMP
                  bash-20222   [001] .....  2070.739081: mm_page_alloc: page=0000000061fcc4c5 pfn=0x104740 order=3 migratetype=1 gfp_flags=GFP_HIGHUSER_MOVABLE
                  bash-20222   [001] ...2.  2070.739151: mm_page_free: page=000000007d012d2c pfn=0x104722 order=0
                  bash-20222   [001] ...4.  2070.739153: mm_page_free_batched: page=000000007d012d2c pfn=0x104722 order=0
           kworker/1:2-88      [001] d..2.  2070.739160: mm_page_pcpu_drain: page=000000007d012d2c pfn=0x104722 order=0 migratetype=0
                  bash-20222   [000] .....  2070.739170: mm_page_free: page=0000000061fcc4c5 pfn=0x104744 order=2
                  bash-20222   [000] .....  2070.739171: mm_page_free: page=0000000061fcc4c5 pfn=0x104900 order=0

      """
    let traceCmd = """
      cpus=2
                  bash-20222 [000]  2070.739071: mm_page_alloc:        page=0xffffea000411c880 pfn=1066786 order=0 migratetype=0 gfp_flags=GFP_KERNEL_ACCOUNT|__GFP_ZERO|__GFP_COMP
                  bash-20222 [001]  2070.739081: mm_page_alloc:        page=0xffffea000411d000 pfn=1066816 order=3 migratetype=1 gfp_flags=0x140cca
                  bash-20222 [001]  2070.739151: mm_page_free:         page=0xffffea000411c880 pfn=1066786 order=0
                  bash-20222 [001]  2070.739153: mm_page_free_batched: page=0xffffea000411c880 pfn=1066786 order=0
                  bash-20222 [000]  2070.739170: mm_page_free:         page=0xffffea000411d100 pfn=1066820 order=2
                  bash-20222 [000]  2070.739171: mm_page_free:         page=0xffffea0004124000 pfn=1067264 order=0
      """
    let perf = """
                  bash 20222 [000]  2070.739071: kmem:mm_page_alloc: page=0xffffea000411c880 pfn=0x104722 order=0 migratetype=0 gfp_flags=GFP_KERNEL_ACCOUNT|__GFP_ZERO|__GFP_COMP
                  bash 20222 [001]  2070.739081: kmem:mm_page_alloc: page=0xffffea000411d000 pfn=0x104740 order=3 migratetype=1 gfp_flags=GFP_HIGHUSER_MOVABLE
                  bash 20222 [001]  2070.739151: kmem:mm_page_free: page=0xffffea000411c880 pfn=0x104722 order=0
                  bash 20222 [001]  2070.739153: kmem:mm_page_free_batched: page=0xffffea000411c880 pfn=0x104722 order=0
                  bash 20222 [000]  2070.739170: kmem:mm_page_free: page=0xffffea000411d100 pfn=0x104744 order=2
                  bash 20222 [000]  2070.739171: kmem:mm_page_free: page=0xffffea0004124000 pfn=0x104900 order=0
      """
    var results: [[(pfn: PFN, order: Int)]] = []
    for text in [plain, traceCmd, perf] {
      let (r, a) = try replay(text, strict: true)
      #expect(r.eventsApplied == 5)
      #expect(r.allocsApplied == 2 && r.freesApplied == 3)
      #expect(r.preallocatedPages == 1)  // 0x104900
      #expect(a.configuration.zones[0].pfns == PFN(0x104400)..<PFN(0x104c00))
      #expect(a.configuration.cpuCount == 2)
      try a.verify()
      results.append(a.freeBlocks())
    }
    #expect(blocks(results[0]) == blocks(results[1]) && blocks(results[0]) == blocks(results[2]))
    let (r, _) = try replay(plain)
    #expect(r.linesIgnored == 5)  // 3 headers, free_batched, pcpu_drain
    #expect(r.linesRead == 10)
  }

  /// Older kernels print decimal pfns and extra fields; failed allocations are skipped.
  @Test func decimalPfnsExtraFieldsAndFailures() throws {
    let text = """
      swapper/0-1 [000] .... 1.000: mm_page_alloc: page=ffffea0000040000 pfn=4096 order=2 migratetype=0 gfp_flags=GFP_KERNEL
      swapper/0-1 [000] .... 1.001: mm_page_alloc: page=0000000000000000 pfn=0x0 order=9 migratetype=1 gfp_flags=GFP_TRANSHUGE
      swapper/0-1 [000] .... 1.002: mm_page_alloc: page=(null) pfn=0 order=0 migratetype=0 gfp_flags=GFP_KERNEL
      swapper/0-1 [000] .... 1.003: mm_page_free: page=ffffea0000040000 pfn=4096 order=2 nr_free=3\r
      """
    let (r, a) = try replay(text, strict: true)
    #expect(r.allocFailures == 2)
    #expect(r.eventsApplied == 2)
    #expect(a.configuration.zones[0].pfns == PFN(4096)..<PFN(5120))
    #expect(a.freeBlockCounts()[10] == 1)
  }

  /// The pages of one high-order allocation freed one by one, then reallocated.
  @Test func highOrderAllocationFreedPageByPage() throws {
    var text = "t-1 [000] . 1.0: mm_page_alloc: page=1 pfn=0x2000 order=2 migratetype=0 gfp_flags=GFP_KERNEL\n"
    for k in [3, 0, 2, 1] {
      text += "t-1 [001] . 1.0: mm_page_free: page=1 pfn=0x\(String(0x2000 + k, radix: 16)) order=0\n"
    }
    text += "t-1 [000] . 1.0: mm_page_alloc: page=1 pfn=0x2000 order=1 migratetype=0 gfp_flags=GFP_KERNEL\n"
    text += "t-1 [000] . 1.0: mm_page_free: page=1 pfn=0x2000 order=1\n"
    let (r, a) = try replay(text, strict: true)
    #expect(r.eventsApplied == 7)
    #expect(a.freeBlockCounts()[10] == 1 && a.freePageCount == 1024)
    try a.verify()
  }

  /// The map of a replay colours cells by the trace's migratetype= and marks mixed blocks.
  @Test func replayMapUsesAllocationTypes() throws {
    let text = """
      t-1 [000] . 1.0: mm_page_alloc: page=1 pfn=0x2000 order=0 migratetype=0 gfp_flags=GFP_KERNEL
      t-1 [000] . 1.0: mm_page_alloc: page=1 pfn=0x2001 order=0 migratetype=1 gfp_flags=GFP_HIGHUSER_MOVABLE
      t-1 [000] . 1.0: mm_page_alloc: page=1 pfn=0x2002 order=1 migratetype=1 gfp_flags=GFP_HIGHUSER_MOVABLE
      t-1 [000] . 1.0: mm_page_alloc: page=1 pfn=0x2200 order=2 migratetype=2 gfp_flags=GFP_KERNEL|__GFP_RECLAIMABLE
      t-1 [000] . 1.0: mm_page_free: page=1 pfn=0x2400 order=0
      """
    let (r, a) = try replay(text, strict: true)
    #expect(r.allocatedByType.count == 4)  // zone 0x2000-0x2800
    #expect(r.allocatedByType[2] == [0, 0, 0, 0, 0, 0, 0])  // the pre-trace page at 0x2400 was freed
    #expect(r.allocatedByType[0] == [1, 3, 0, 0, 0, 0, 0])
    #expect(r.allocatedByType[1] == [0, 0, 4, 0, 0, 0, 0])
    let m = FragmentationMap(allocator: a, allocatedByType: r.allocatedByType)
    #expect(m.cells[0].isMixed && m.cells[0].displayType == .movable)
    #expect(!m.cells[1].isMixed && m.cells[1].displayType == .reclaimable)
    #expect(m.svg(title: "t").contains("1 mixed blocks"))
  }

  // MARK: - Anomalies and bad input

  func anomalyTrace() -> String {
    """
    t-1 [000] . 1.0: mm_page_alloc: page=1 pfn=0x2000 order=0 migratetype=0 gfp_flags=GFP_KERNEL
    t-1 [000] . 1.0: mm_page_alloc: page=1 pfn=0x2000 order=0 migratetype=0 gfp_flags=GFP_KERNEL
    t-1 [000] . 1.0: mm_page_free: page=1 pfn=0x2000 order=0
    t-1 [000] . 1.0: mm_page_free: page=1 pfn=0x2000 order=0
    t-1 [000] . 1.0: mm_page_free: page=1 pfn=0x9000 order=0
    t-1 [000] . 1.0: mm_page_alloc: page=1 pfn=0xzz order=0
    t-1 [000] . 1.0: mm_page_free: page=1 pfn=0x2001
    t-1 [000] . 1.0: mm_page_free: page=1 pfn=0x2001 order=11
    t-1 [000] . 1.0: mm_page_alloc: page=1 order=1
    t-1 [000] . 1.0: mm_page_free: page=1 pfn=0x2
    """
  }

  @Test func anomaliesAreCountedWithLineNumbers() throws {
    let (r, a) = try replay(anomalyTrace(), zone: PFN(0x2000)..<PFN(0x3000))
    #expect(r.count(.allocBusy) == 1)
    #expect(r.anomalies[0].firstLines == [2])
    #expect(r.count(.doubleFree) == 1)
    #expect(r.anomalies[1].firstLines == [4])
    #expect(r.count(.outOfRange) == 1)
    #expect(r.anomalies[2].firstLines == [5])  // 0x9000
    #expect(r.count(.malformed) == 5)
    #expect(r.anomalies[3].firstLines == [6, 7, 8, 9, 10])  // the last is cut short
    #expect(r.eventsApplied == 2)
    #expect(r.text.contains("malformed:           5 (lines 6, 7, 8, 9, 10)"))
    #expect(r.json.contains("\"malformed\": {\"count\": 5, \"first_lines\": [6, 7, 8, 9, 10]}"))
    try a.verify()
  }

  @Test func strictStopsAtTheFirstAnomaly() {
    #expect(throws: ReplayError.self) { try replay(anomalyTrace(), name: "x.trace", strict: true) }
    do {
      _ = try replay(anomalyTrace(), name: "x.trace", zone: PFN(0x2000)..<PFN(0x3000), strict: true)
      Issue.record("no error with --zone")
    } catch {
      #expect(error.description == "x.trace:2: alloc-busy: pfn 0x2000 order 0: page 0x2000 is not free")
    }
    let lines = anomalyTrace().split(separator: "\n")
    for (n, want) in [
      (6, "x.trace:2: malformed: mm_page_alloc: bad pfn= value '0xzz'"),
      (7, "x.trace:2: malformed: mm_page_free line without order="),
      (8, "x.trace:2: malformed: mm_page_free: order 11 is above MAX_PAGE_ORDER (10)"),
      (9, "x.trace:2: malformed: mm_page_alloc line without pfn="),
    ] {
      let text = lines[0] + "\n" + lines[n - 1] + "\n"
      do {
        _ = try replay(String(text), name: "x.trace", strict: true)
        Issue.record("no error for line \(n)")
      } catch {
        #expect(error.description == want)
      }
    }
  }

  @Test func badFilesGiveErrorsNotCrashes() throws {
    // Missing file.
    #expect(throws: ReplayError.self) { try TraceReplay.run(path: "/nonexistent/trace.gz") }
    do { _ = try TraceReplay.run(path: "/nonexistent/trace.gz") } catch {
      #expect(error.description == "/nonexistent/trace.gz: No such file or directory")
    }
    // Random bytes: nothing to replay.
    var rng = TestRNG(seed: 9)
    let garbage = (0..<100_000).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
    let g = writeTemp("garbage", garbage)
    defer { unlink(g) }
    do {
      _ = try TraceReplay.run(path: g)
      Issue.record("garbage replayed")
    } catch {
      #expect(error.description.hasPrefix("\(g): no mm_page_alloc or mm_page_free event to replay"))
    }
    // Empty file.
    let e = writeTemp("empty", [])
    defer { unlink(e) }
    #expect(throws: ReplayError.self) { try TraceReplay.run(path: e) }
    // A huge pfn span without --zone.
    let far =
      "t-1 [000] . 1.0: mm_page_free: page=1 pfn=0x1000 order=0\nt-1 [000] . 1.0: mm_page_free: page=1 pfn=0xfff00000 order=0\n"
    do {
      _ = try replay(far, name: "far.trace")
      Issue.record("huge span replayed")
    } catch {
      #expect(
        error.description.hasPrefix("far.trace:2: pfns span 0x1000-0xfff00400 (lowest on line 1), more than 2^27 pages")
      )
    }
  }

  /// A gzip file cut short is an error naming the line the data stopped in.
  @Test func truncatedGzipIsAnError() throws {
    let f = fopen(realTracePath, "r")!
    var head = [UInt8](repeating: 0, count: 300_000)
    let n = fread(&head, 1, head.count, f)
    fclose(f)
    #expect(n == head.count)
    let path = writeTemp("cut.trace.gz", head)
    defer { unlink(path) }
    do {
      _ = try TraceReplay.run(path: path)
      Issue.record("truncated gzip replayed")
    } catch {
      #expect(error.line != nil && error.line! > 1000)
      #expect(error.description.hasSuffix(": truncated gzip stream (unexpected end of file)"))
      #expect(error.description.hasPrefix("\(path):"))
    }
  }

  /// Corrupted bytes anywhere in a valid trace: never a crash, always a consistent
  /// allocator, and every anomaly has a line number.
  @Test func corruptedTracesNeverCrash() throws {
    var text = "# tracer: nop\n"
    var rng = TestRNG(seed: 5)
    for i in 0..<200 {
      let pfn = 0x2000 + Int(rng.next() % 4096) & ~3
      text +=
        "t-\(i) [00\(i % 2)] ..... 1.\(i): mm_page_alloc: page=00000000deadbeef pfn=0x\(String(pfn, radix: 16)) order=2 migratetype=0 gfp_flags=GFP_KERNEL\n"
      text +=
        "t-\(i) [00\(i % 2)] ..... 1.\(i): mm_page_free: page=00000000deadbeef pfn=0x\(String(pfn + 1, radix: 16)) order=0\n"
    }
    let clean = Array(text.utf8)
    let alphabet = Array("0123456789abcdefx=: []\n\u{0}\u{ff}".utf8)
    for _ in 0..<60 {
      var bytes = clean
      for _ in 0..<(1 + Int(rng.next() % 30)) {
        let at = Int(rng.next() % UInt64(bytes.count))
        switch rng.next() % 3 {
        case 0: bytes[at] = alphabet[Int(rng.next() % UInt64(alphabet.count))]
        case 1: bytes.remove(at: at)
        default: bytes.insert(alphabet[Int(rng.next() % UInt64(alphabet.count))], at: at)
        }
      }
      if rng.next() % 4 == 0 { bytes.removeLast(Int(rng.next() % 200)) }  // truncated
      let t = String(decoding: bytes, as: UTF8.self)
      let (r, a) = try replay(t, zone: PFN(0x2000)..<PFN(0x3000))
      try a.verify()
      #expect(r.linesRead >= 300)
      #expect(r.anomalies.allSatisfy { $0.firstLines.count == min($0.count, 5) })
    }
  }

  /// A plain (uncompressed) file is read the same way; a directory is an error.
  @Test func plainFileAndDirectory() throws {
    let text =
      "t-1 [001] . 1.0: mm_page_alloc: page=1 pfn=0x2000 order=3 migratetype=0\nt-1 [001] . 1.0: mm_page_free: page=1 pfn=0x2000 order=3\n"
    let path = writeTemp("plain.trace", Array(text.utf8))
    defer { unlink(path) }
    let (r, a) = try TraceReplay.run(path: path, options: .init(strict: true))
    #expect(r.eventsApplied == 2 && r.linesRead == 2)
    #expect(a.freeBlockCounts()[10] == 1)
    do {
      _ = try TraceReplay.run(path: "/tmp")
      Issue.record("directory replayed")
    } catch {
      #expect(error.description == "/tmp: is a directory")
    }
  }

  /// The streamed gzip path (1 MiB pieces, lines split across pieces, a 3 MiB line that
  /// grows the buffer) gives the same replay as the plain file.
  @Test(.enabled(if: system("command -v gzip >/dev/null") == 0)) func gzipStreamMatchesPlain() throws {
    var text = ""
    var rng = TestRNG(seed: 3)
    for i in 0..<30000 {
      let pfn = 0x10000 + Int(rng.next() % 8192)
      text +=
        "t-\(i) [00\(i % 2)] ..... 1.\(i): mm_page_\(i % 3 == 0 ? "free" : "alloc"): page=00000000deadbeef pfn=0x\(String(pfn, radix: 16)) order=0 migratetype=1 gfp_flags=GFP_HIGHUSER_MOVABLE\n"
      if i == 15000 { text += "# " + String(repeating: "x", count: 3 << 20) + "\n" }
    }
    let plain = writeTemp("stream.trace", Array(text.utf8))
    defer { unlink(plain) }
    #expect(system("gzip -c \(plain) > \(plain).gz") == 0)
    defer { unlink(plain + ".gz") }
    let (r1, a1) = try TraceReplay.run(path: plain)
    let (r2, a2) = try TraceReplay.run(path: plain + ".gz")
    #expect(r1.linesRead == 30001 && r2.linesRead == 30001)
    #expect(r1.eventsApplied == r2.eventsApplied && r1.linesIgnored == r2.linesIgnored)
    #expect(r1.anomalies == r2.anomalies)
    #expect(blocks(a1.freeBlocks()) == blocks(a2.freeBlocks()))
    try a2.verify()
  }

  /// A line cut short anywhere is never taken for an event: every proper prefix of an
  /// mm_page_free line is ignored (cut inside the event name) or malformed, down to one
  /// cut right after `order=`.
  @Test func everyPrefixOfALineIsNoEvent() throws {
    let line = "t-1 [000] . 1.0: mm_page_free: page=1 pfn=0x2001 order=1"
    let head = "t-1 [000] . 1.0: mm_page_alloc: page=1 pfn=0x2000 order=3 migratetype=0\n"
    for n in 1..<line.count {
      let (r, _) = try replay(head + line.prefix(n), zone: PFN(0x2000)..<PFN(0x2400))
      #expect(r.eventsParsed == 1, "cut after \(n) characters: \(line.prefix(n))")
      #expect(r.eventsApplied == 1)
    }
    let (r, _) = try replay(head + line, zone: PFN(0x2000)..<PFN(0x2400), strict: true)
    #expect(r.eventsApplied == 2)
    do {
      _ = try replay(head + line.dropLast(), name: "x.trace", strict: true)
      Issue.record("a line cut after order= replayed")
    } catch {
      #expect(error.description == "x.trace:2: malformed: mm_page_free: bad order= value ''")
    }
  }

  /// A plain file cut in the middle of its last line: the cut line is malformed.
  @Test func truncatedPlainFileLastLineIsMalformed() throws {
    let text =
      "t-1 [000] . 1.0: mm_page_alloc: page=1 pfn=0x2000 order=0 migratetype=0\nt-1 [000] . 1.0: mm_page_free: page=1 pfn=0x20"
    let (r, _) = try replay(text)
    #expect(r.count(.malformed) == 1 && r.anomalies[3].firstLines == [2])
    #expect(r.linesRead == 2)
  }

  @Test func zoneOption() throws {
    #expect(TraceReplay.parseZone("0x1000-0x2000") == PFN(0x1000)..<PFN(0x2000))
    #expect(TraceReplay.parseZone("4096-8192") == PFN(4096)..<PFN(8192))
    #expect(TraceReplay.parseZone("8192-4096") == nil)
    #expect(TraceReplay.parseZone("abc") == nil)
  }
}

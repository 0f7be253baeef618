@_spi(Benchmark) import PageAlloc
import _PageAllocUtilities

// What the memory-debugging options cost: the order-0 alloc+free pair and the high-order
// contig loop (alloc order 9, split_page, free_contig_range of its 512 pages), each with
// every option off, with page_owner on, and with debug_pagealloc on, on allocators backed
// by anonymous memory (debug_pagealloc needs memory to protect; the off variant uses the
// same backing, so the ratios compare like with like). The variants run interleaved in
// passes, each keeping its fastest pass.

extension BenchSuite {
  /// `debug`: the order-0 pair and the order-9 contig loop with page_owner and with
  /// debug_pagealloc, as ratios against the same loop with both off.
  public static let debug = BenchSuite(
    name: "debug",
    summary: "order-0 pair and order-9 contig loop: off vs page_owner vs debug_pagealloc",
    defaultIterations: 200_000, quickIterations: 5_000, iterationUnit: "order-0 pairs (contig loop: 1/20 as many)",
    run: { try DebugBench.run($0) },
    ratios: { DebugBench.ratios($0) })
}

enum DebugBench {
  static let name = "debug"
  static let passes = 5

  enum Option: String, CaseIterable {
    case off
    case pageOwner = "page_owner"
    case debugPageAlloc = "debug_pagealloc"
  }

  enum Loop: String, CaseIterable {
    case order0 = "order0"
    case contig = "contig"
  }

  static func run(_ o: BenchOptions) throws -> [BenchResult] {
    let n = max(o.iterations(for: .debug), 1)
    var out: [BenchResult] = []
    let options = Option.allCases
    for (li, loop) in Loop.allCases.enumerated() {
      let count = loop == .order0 ? n : max(n / 20, 1)
      let steps = options.count * passes
      let span = 1.0 / Double(Loop.allCases.count * steps)
      let best = try interleavedBest(options, total: count, passes: passes) { option, k, step in
        o.report("\(name) \(loop.rawValue) \(option.rawValue)", Double(li * steps + step) * span)
        return try measure(loop, option, k, o)
      }
      let off = Double(max(best[.off]!, 1))
      for option in options {
        let ns = best[option]!
        var extra: [String: Double] = ["ns_per_iteration": Double(ns) / Double(count)]
        if option != .off { extra["over_off"] = Double(ns) / off }
        out.append(
          BenchResult(
            suite: name, variant: "\(loop.rawValue) \(option.rawValue)", order: loop == .order0 ? 0 : 9,
            iterations: count, pagesPerIteration: loop == .order0 ? 1 : 512, totalNanoseconds: ns, extra: extra))
      }
    }
    return out
  }

  /// One pass of `loop` with `option` on a fresh allocator, checked afterwards.
  static func measure(_ loop: Loop, _ option: Option, _ n: Int, _ o: BenchOptions) throws -> UInt64 {
    let a: PageAllocator
    do {
      a = try PageAllocator(
        configuration: .init(
          zones: [ZoneConfiguration(kind: .normal, pfns: PFN(0)..<PFN(1 << 16))], cpuCount: 1, backing: .anonymous,
          pageOwner: option == .pageOwner, debugPageAlloc: option == .debugPageAlloc))
    } catch {
      throw BenchError(suite: name, "cannot create the allocator: \(error)")
    }
    PageAllocator.setThreadCPU(0)
    defer { PageAllocator.setThreadCPU(nil) }
    let start = a.freePageCount
    _ = try run(a, loop, min(n, 64))
    let ns = try run(a, loop, n)
    try benchCheck(a, startFree: start, suite: name, variant: "\(loop.rawValue) \(option.rawValue)", o)
    return ns
  }

  @inline(never)
  static func run(_ a: PageAllocator, _ loop: Loop, _ n: Int) throws -> UInt64 {
    let t0 = monotonicNanoseconds()
    var i = 0
    switch loop {
    case .order0:
      while i < n {
        guard let p = a.allocPages(order: 0, gfp: .kernel) else { throw benchAllocFailed(name, 0) }
        a.freePages(p, order: 0)
        i &+= 1
      }
    case .contig:
      while i < n {
        guard let p = a.allocPages(order: 9, gfp: .kernel) else { throw benchAllocFailed(name, 9) }
        a.splitPage(p, order: 9)
        a.freeContigRange(p, count: 512)
        i &+= 1
      }
    }
    return monotonicNanoseconds() &- t0
  }

  /// `debug.<loop>.page_owner_over_off` and `debug.<loop>.debug_pagealloc_over_off`.
  static func ratios(_ results: [BenchResult]) -> [(String, Double)] {
    var out: [(String, Double)] = []
    for r in results where r.suite == name {
      guard let x = r.extra["over_off"] else { continue }
      let parts = r.variant.split(separator: " ")
      out.append(("debug.\(parts[0]).\(parts[1])_over_off", x))
    }
    return out
  }
}

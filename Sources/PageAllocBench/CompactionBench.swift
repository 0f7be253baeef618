// The proactive-compaction measurement (the 2020 "mm: Proactive compaction" work, merged
// for Linux 5.9), in user space: a pool allocated almost entirely as movable order-0 pages,
// then 3/4 of the pages of every 2 MiB-aligned chunk freed, so that no free order-9 block
// is left although 3/4 of memory is free. Order-9 allocations are then timed one by one:
//
// - `none`: direct compaction off (a kernel without CONFIG_COMPACTION): they fail;
// - `direct`: each allocation compacts (ASYNC, then SYNC_LIGHT) and captures its block;
// - `proactive`: proactive compaction at the default proactiveness 20 first, then the
//   allocations, with a kcompactd round between two of them as the background daemon
//   would have run (those rounds are not timed: their cost is the daemon's CPU time);
// - `compact-all`: after `compactAll()` (/proc/sys/vm/compact_memory), whose own run gives
//   the pages migrated per second and the share of order-9 blocks recovered;
// - `contig-movable` / `contig-free`: `allocContigRange` of 16384 pages over that
//   fragmented movable memory (migrate + take) and over the same range free.
//
// The pool is a memfd, every page of it written once, so every migration copies 4 KiB of
// resident memory; each movable page holds a tag, checked after every variant (migration
// must carry the bytes along).

@_spi(Benchmark) import PageAlloc
import _PageAllocUtilities
import PageAllocVMalloc

extension BenchSuite {
  /// `compaction`: order-9 allocation latency over a pool fragmented by movable pages,
  /// without compaction, with direct compaction, after proactive compaction and after
  /// `compactAll()`; the migration rate; `allocContigRange` over movable pages.
  public static let compaction = BenchSuite(
    name: "compaction",
    summary: "order-9 latency on movable fragmentation: none, direct, proactive, compact-all; contig over movable",
    defaultIterations: 1, quickIterations: 1, iterationUnit: "runs of every variant (1 GiB pool; --quick 256 MiB)",
    run: { o in try CompactionBench.run(pages: o.quick ? 1 << 16 : 1 << 18, sabotage: o.sabotage, progress: o.progress)
    },
    ratios: { CompactionBench.ratios($0) })
}

public enum CompactionBench {
  static let name = "compaction"

  /// The fragmented pool: every page allocated as a movable order-0 page with an owner and
  /// a tag, then 3 of every 4 pages freed (pfn % 4 != 3) in every 2 MiB chunk.
  final class Pool {
    let a: PageAllocator
    let table: MovablePageTable
    let kept: [MovablePageTable.Handle]

    init(pages: Int) throws {
      var config = PageAllocator.Configuration.normal(pages: pages, cpuCount: 2, backing: .memfd)
      config.printReports = false
      do { a = try PageAllocator(configuration: config) } catch {
        throw BenchError(suite: CompactionBench.name, "cannot create the allocator: \(error)")
      }
      table = MovablePageTable(allocator: a)
      var all: [MovablePageTable.Handle] = []
      all.reserveCapacity(pages)
      while let h = table.allocate(order: 0, gfp: [.highUserMovable, .noWarn]) { all.append(h) }
      // The watermark reserve the allocator would not hand out: taken too (claimed, then
      // registered), so that the pool is movable pages from end to end.
      a.drainAllPages()
      for b in a.freeBlocks() {
        for q in b.pfn..<(b.pfn + (1 << b.order)) where a.claimFreeRange(q.value, count: 1) == .claimed {
          if let h = table.adopt(q, order: 0) { all.append(h) }
        }
      }
      // Every page written, as the program that allocated the memory would have: the
      // memfd pages are resident, so a migration copies memory rather than faulting in a
      // fresh page (the kernel's migration targets are resident too).
      var kept: [MovablePageTable.Handle] = []
      for h in all {
        guard let p = table.pfn(of: h) else { continue }
        a.address(of: p)!.storeBytes(of: CompactionBench.tag(h), as: UInt64.self)
      }
      for h in all {
        guard let p = table.pfn(of: h) else { continue }
        if p.value % 4 == 3 { kept.append(h) } else { table.free(h) }
      }
      self.kept = kept
      a.drainAllPages()
    }

    /// Free blocks of order 9 and above, counted in order-9 blocks.
    var freeOrder9: Int {
      a.drainAllPages()
      return a.freeBlocks().filter { $0.order >= 9 }.reduce(0) { $0 + (1 << ($1.order - 9)) }
    }

    /// Every kept page still holds its tag where its owner now has it.
    func check(_ variant: String) throws {
      for h in kept {
        let ok = table.withPage(h) { p, _ in CompactionBench.tag(h) == a.address(of: p)!.load(as: UInt64.self) }
        if ok != true {
          throw BenchError(suite: CompactionBench.name, "\(variant): a migrated page lost its bytes")
        }
      }
    }

    /// Frees everything and checks the allocator (after the sabotage asked for, if any).
    func finish(_ variant: String, blocks: [PFN], sabotage: BenchSabotage?) throws {
      try check(variant)
      for b in blocks { a.freePages(b, order: 9) }
      for h in kept { table.free(h) }
      a.drainAllPages()
      sabotage?.apply(a)
      try benchCheckRestored(a, startFree: a.managedPageCount, suite: CompactionBench.name, variant: variant)
    }
  }

  static func tag(_ h: MovablePageTable.Handle) -> UInt64 { UInt64(h.id) &* 0x9E37_79B9_7F4A_7C15 | 1 }

  /// Every variant on a 1 GiB pool (256 MiB with `quick`).
  public static func run(quick: Bool, progress: (@Sendable (String, Double) -> Void)? = nil) throws -> [BenchResult] {
    try run(pages: quick ? 1 << 16 : 1 << 18, sabotage: nil, progress: progress)
  }

  /// Every variant on a pool of `pages` pages (at least 2^14: the contiguous range is
  /// 16384 pages from a quarter of the pool, or a quarter of the pool when smaller). A
  /// `sabotage` breaks every variant's pool just before its result check.
  package static func run(
    pages: Int, sabotage: BenchSabotage? = nil, progress: (@Sendable (String, Double) -> Void)? = nil
  ) throws -> [BenchResult] {
    PageAllocator.setThreadCPU(0)
    defer { PageAllocator.setThreadCPU(nil) }
    var out: [BenchResult] = []
    let variants = ["none", "direct", "proactive", "compact-all"]
    for (i, v) in variants.enumerated() {
      progress?("compaction \(v)", Double(i) / Double(variants.count + 1))
      out.append(try latency(v, pages: pages, sabotage: sabotage))
    }
    progress?("compaction contig", Double(variants.count) / Double(variants.count + 1))
    out += try contig(pages: pages, sabotage: sabotage)
    return out
  }

  /// Times order-9 allocations one by one, as many as possible: until `limit`, or until 8
  /// attempts in a row fail (a failed direct compaction defers the next attempts, as in the
  /// kernel). The latencies are those of the allocations that succeeded.
  static func allocateAll(
    _ pool: Pool, limit: Int, between: () -> Void = {}
  ) -> (blocks: [PFN], ns: [UInt64], failures: Int) {
    var blocks: [PFN] = []
    var ns: [UInt64] = []
    var failures = 0
    var inARow = 0
    while blocks.count < limit && inARow < 8 {
      between()
      let t0 = monotonicNanoseconds()
      let p = pool.a.allocPages(order: 9, gfp: [.highUserMovable, .noWarn])
      let dt = monotonicNanoseconds() &- t0
      guard let p else {
        failures += 1
        inARow += 1
        continue
      }
      inARow = 0
      blocks.append(p)
      ns.append(dt)
    }
    return (blocks, ns, failures)
  }

  static func latency(_ variant: String, pages: Int, sabotage: BenchSabotage?) throws -> BenchResult {
    let pool = try Pool(pages: pages)
    let a = pool.a
    let freePages = a.freePageCount
    let possible = freePages / 512
    if pool.freeOrder9 != 0 { throw BenchError(suite: name, "\(variant): the pool has free order-9 blocks") }
    var extra: [String: Double] = ["possible_blocks": Double(possible)]
    var ns: [UInt64] = []
    var blocks: [PFN] = []
    let before = a.compactionStatistics()
    switch variant {
    case "none":
      a.directCompactionEnabled = false
      // Every attempt fails; time a few.
      for _ in 0..<64 {
        let t0 = monotonicNanoseconds()
        if let p = a.allocPages(order: 9, gfp: [.highUserMovable, .noWarn]) { blocks.append(p) }
        ns.append(monotonicNanoseconds() &- t0)
      }
      a.directCompactionEnabled = true
    case "direct":
      let r = allocateAll(pool, limit: possible)
      blocks = r.blocks
      ns = r.ns
      extra["failed_attempts"] = Double(r.failures)
    case "proactive":
      // kcompactd's proactive rounds, untimed, until the score is below the high mark.
      let t0 = monotonicNanoseconds()
      var rounds = 0
      while a.compactProactively().ran { rounds += 1 }
      extra["proactive_ms"] = Double(monotonicNanoseconds() &- t0) / 1e6
      extra["proactive_rounds"] = Double(rounds)
      extra["blocks_after_proactive"] = Double(pool.freeOrder9)
      let r = allocateAll(pool, limit: possible) { _ = a.compactProactively() }
      blocks = r.blocks
      ns = r.ns
      extra["failed_attempts"] = Double(r.failures)
    default:
      let c0 = a.compactionStatistics()
      let t0 = monotonicNanoseconds()
      a.compactAll()
      let dt = monotonicNanoseconds() &- t0
      let migrated = a.compactionStatistics().pgmigrateSuccess - c0.pgmigrateSuccess
      let recovered = pool.freeOrder9
      extra["compact_all_ms"] = Double(dt) / 1e6
      extra["pages_migrated"] = Double(migrated)
      extra["migrated_pages_per_s"] = Double(migrated) / (Double(dt) / 1e9)
      extra["blocks_recovered"] = Double(recovered)
      extra["share_recovered"] = Double(recovered) / Double(max(possible, 1))
      let r = allocateAll(pool, limit: possible)
      blocks = r.blocks
      ns = r.ns
      extra["failed_attempts"] = Double(r.failures)
    }
    let after = a.compactionStatistics()
    let sorted = ns.sorted()
    let total = ns.reduce(0, &+)
    extra["blocks"] = Double(blocks.count)
    extra["share_allocated"] = Double(blocks.count) / Double(max(possible, 1))
    extra["mean_us"] = ns.isEmpty ? 0 : Double(total) / Double(ns.count) / 1000
    extra["p50_us"] = sorted.isEmpty ? 0 : Double(sorted[sorted.count / 2]) / 1000
    extra["p99_us"] = sorted.isEmpty ? 0 : Double(sorted[min(sorted.count - 1, sorted.count * 99 / 100)]) / 1000
    extra["max_us"] = sorted.last.map { Double($0) / 1000 } ?? 0
    extra["compact_stall"] = Double(after.compactStall - before.compactStall)
    extra["pgmigrate_success"] = Double(after.pgmigrateSuccess - before.pgmigrateSuccess)
    if variant != "none" && blocks.isEmpty {
      throw BenchError(suite: name, "\(variant): no order-9 block could be allocated")
    }
    try pool.finish(variant, blocks: blocks, sabotage: sabotage)
    return BenchResult(
      suite: name, variant: variant, order: 9, iterations: max(ns.count, 1), pagesPerIteration: 512,
      totalNanoseconds: total, extra: extra)
  }

  /// `allocContigRange` of 16384 pages over the fragmented movable pool (a quarter of the
  /// range's pages in use, all movable) against the same range of a free pool.
  static func contig(pages: Int, sabotage: BenchSabotage?) throws -> [BenchResult] {
    let n = min(16384, pages / 4)
    let range = PFN(pages / 4)..<PFN(pages / 4 + n)
    var out: [BenchResult] = []
    for variant in ["contig-movable", "contig-free"] {
      let pool = variant == "contig-movable" ? try Pool(pages: pages) : nil
      let a = try pool?.a ?? benchAllocatorMemfd(pages: pages)
      let before = a.compactionStatistics()
      let t0 = monotonicNanoseconds()
      do { try a.allocContigRange(range, gfp: .kernel) } catch {
        throw BenchError(suite: name, "\(variant): allocContigRange failed: \(error)")
      }
      let dt = monotonicNanoseconds() &- t0
      let migrated = a.compactionStatistics().pgmigrateSuccess - before.pgmigrateSuccess
      a.freeContigRange(range.lowerBound, count: n)
      if let pool {
        try pool.finish(variant, blocks: [], sabotage: sabotage)
      } else {
        a.drainAllPages()
        sabotage?.apply(a)
        try benchCheckRestored(a, startFree: a.managedPageCount, suite: name, variant: variant)
      }
      out.append(
        BenchResult(
          suite: name, variant: variant, iterations: 1, pagesPerIteration: n, totalNanoseconds: dt,
          extra: ["pages_migrated": Double(migrated), "us": Double(dt) / 1000]))
    }
    return out
  }

  static func benchAllocatorMemfd(pages: Int) throws -> PageAllocator {
    do { return try PageAllocator(configuration: .normal(pages: pages, cpuCount: 2, backing: .memfd)) } catch {
      throw BenchError(suite: name, "cannot create the allocator: \(error)")
    }
  }

  /// The ratios of the JSON output: direct over proactive latency (the kernel's work
  /// reported 70-80x), and contiguous allocation over movable against free.
  static func ratios(_ results: [BenchResult]) -> [(String, Double)] {
    func r(_ v: String) -> BenchResult? { results.first { $0.suite == name && $0.variant == v } }
    var out: [(String, Double)] = []
    if let d = r("direct")?.extra["mean_us"], let p = r("proactive")?.extra["mean_us"], p > 0 {
      out.append(("compaction.direct_over_proactive_mean", d / p))
    }
    if let d = r("direct")?.extra["p99_us"], let p = r("proactive")?.extra["p99_us"], p > 0 {
      out.append(("compaction.direct_over_proactive_p99", d / p))
    }
    if let m = r("contig-movable"), let f = r("contig-free"), f.totalNanoseconds > 0 {
      out.append(("compaction.contig_movable_over_free", Double(m.totalNanoseconds) / Double(f.totalNanoseconds)))
    }
    return out
  }
}

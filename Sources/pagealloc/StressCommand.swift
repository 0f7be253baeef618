import ArgumentParser
import PageAlloc
import PageAllocBench
import PageAllocStress
import PageAllocTrace
import PageAllocVMalloc
import PageAllocViews
import _PageAllocUtilities

/// `pagealloc stress`: the multi-threaded randomized workload (see StressEngine).
struct Stress: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Run a multi-threaded randomized workload over the whole API and check the allocator.",
    discussion: """
      Every worker mixes alloc/free of every order, split, get/put, freeContigRange, bulk, \
      frozen and contiguous-range calls with injected allocation failures; verify() runs \
      at intervals and at the end. With --vmalloc (the default) every worker also vmallocs \
      and vfrees areas of 1...600 pages and vmaps pages it allocated, checking the patterns \
      it writes through both addresses; the memory is then a memfd (MAP_NORESERVE: only \
      touched pages cost RAM). --no-vmalloc keeps the memory unbacked. --bad-free RATE adds deliberate double frees, wrong \
      orders, foreign pfns and compound heads: each must be reported, none may cost a page. \
      Exit status 1 when a check fails.
      """)

  @Option(help: "Worker threads.") var threads = 1
  @Option(help: "Run time limit in seconds (default 5 unless --ops is given).") var seconds: Double?
  @Option(help: "Stop after this many operations in total.") var ops: Int?
  @Option(help: "Random seed: the same seed on 1 thread gives the same run.") var seed: UInt64 = 1
  @Option(name: .customLong("bad-free"), help: "Fraction (0...1) of operations that are deliberate bad frees.")
  var badFree: Double = 0
  @Option(name: .customLong("fault-percent"), help: "Percent of allocations failed by fault injection.")
  var faultPercent = 1
  @Option(name: .customLong("verify-every"), help: "Operations of worker 0 between verifications (0: at the end only).")
  var verifyEvery = 100_000
  @Option(help: "Pages of memory (a DMA zone of 4096 pages, the rest Normal, a hole in the middle).")
  var pages = 1 << 16
  @Flag(inversion: .prefixedNo, help: "Mix in vmalloc/vfree/vmap/vunmap (memfd-backed memory).")
  var vmalloc = true
  @Option(name: .customLong("vmalloc-weight"), help: "Weight of vmalloc operations against the engine's 100.")
  var vmallocWeight = 1
  @Flag(
    name: .customLong("page-owner"),
    help:
      "Run with page_owner on; print the page_owner_sort summary of the pages held when the run stopped, and the leak report after cleanup."
  )
  var pageOwner = false

  func validate() throws {
    guard (1...256).contains(threads) else { throw ValidationError("--threads \(threads): must be 1...256") }
    if let seconds, !(seconds > 0 && seconds <= 86400) {
      throw ValidationError("--seconds \(seconds): must be in (0, 86400]")
    }
    if let ops, ops < 0 { throw ValidationError("--ops \(ops): must not be negative") }
    guard (0...1).contains(badFree) else { throw ValidationError("--bad-free \(badFree): must be a fraction 0...1") }
    guard (0...100).contains(faultPercent) else {
      throw ValidationError("--fault-percent \(faultPercent): must be 0...100")
    }
    guard verifyEvery >= 0 else { throw ValidationError("--verify-every \(verifyEvery): must not be negative") }
    guard pages >= 8192 && pages <= 1 << 26 else { throw ValidationError("--pages \(pages): must be 8192...2^26") }
    guard (1...10_000).contains(vmallocWeight) else {
      throw ValidationError("--vmalloc-weight \(vmallocWeight): must be 1...10000")
    }
  }

  func run() throws {
    var config = StressConfiguration(
      threads: threads, seconds: seconds ?? (ops == nil ? 5 : nil), operations: ops, seed: seed,
      badFreeRate: badFree, faultPercent: faultPercent, verifyEvery: verifyEvery, pages: pages,
      extensions: stressExtensions(vmalloc: vmalloc, vmallocWeight: vmallocWeight))
    config.pageOwner = pageOwner
    let summary = try StressEngine.run(config)
    if let s = summary.pageOwnerSummary {
      print("page_owner: the pages held when the run stopped, by allocation stack (page_owner_sort --cull=stacktrace)")
      print(s.isEmpty ? "(none)\n" : s, terminator: "")
    }
    if let leaks = summary.leakReport {
      print("page_owner: pages still held after every worker gave its pages back (quarantined pages included)")
      print(leaks, terminator: "")
    }
    print(summary)
    if !summary.passed { throw ExitCode(1) }
  }
}

/// Workloads from other parts of the tool plugged into the stress run: vmalloc/vfree/vmap
/// of random sizes (its memfd backing follows from the extension).
func stressExtensions(vmalloc: Bool, vmallocWeight: Int) -> [any StressExtension] {
  vmalloc ? [VMallocStressExtension(weight: vmallocWeight)] : []
}

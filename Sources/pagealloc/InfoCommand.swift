import ArgumentParser
import PageAlloc
import PageAllocBench
import PageAllocStress
import PageAllocTrace
import PageAllocVMalloc
import PageAllocViews
import _PageAllocUtilities

extension InfoWorkload: ExpressibleByArgument {}
extension InfoCompaction: ExpressibleByArgument {}

/// Options shared by `info` and `map`: the workload and the machine it runs on.
struct WorkloadOptions: ParsableArguments {
  @Option(help: "The workload to run first: \(InfoWorkload.allCases.map(\.rawValue).joined(separator: ", ")).")
  var workload: InfoWorkload = .fragment
  @Option(help: "Pages in the Normal zone (at least 4096).") var pages = 1 << 18
  @Option(help: "Per-CPU page sets.") var cpus = 2
  @Option(help: "Workload seed.") var seed: UInt64 = 42
  @Option(
    help:
      "Compaction after the workload: \(InfoCompaction.allCases.map(\.rawValue).joined(separator: ", ")) (zone: compactZone(order: 9), all: compactAll(), proactive: compactProactively())."
  )
  var compact: InfoCompaction = .none

  func validate() throws {
    guard pages >= 4096, pages <= 1 << 26 else { throw ValidationError("--pages must be 4096...67108864") }
    guard (1...64).contains(cpus) else { throw ValidationError("--cpus must be 1...64") }
  }

  /// The allocator after the workload and the compaction, and what the compaction did.
  func makeAllocator() throws -> (PageAllocator, String) {
    let a = try PageAllocator(configuration: .normal(pages: pages, cpuCount: cpus, backing: .none))
    workload.run(on: a, seed: seed)
    return (a, compact.run(on: a))
  }
}

/// `pagealloc info`: the /proc views after a workload.
struct Info: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract:
      "Print /proc/buddyinfo, pagetypeinfo, zoneinfo, vmstat and the extfrag debugfs indexes after a workload (and a compaction)."
  )
  @OptionGroup var options: WorkloadOptions
  @Flag(help: "Drain the pcp lists before printing.") var drain = false

  func run() throws {
    let (a, compaction) = try options.makeAllocator()
    if drain { a.drainAllPages() }
    print("# workload \(options.workload.rawValue): \(options.workload.summary)")
    print("# \(options.pages) pages, \(options.cpus) CPUs\(drain ? ", pcp lists drained" : "")")
    print("# \(compaction)\n")
    print("$ cat /proc/buddyinfo")
    print(a.buddyInfo())
    print("$ cat /proc/pagetypeinfo")
    print(a.pageTypeInfo())
    print("$ cat /proc/zoneinfo")
    print(a.zoneInfo())
    print("$ cat /proc/vmstat")
    print(a.vmstat())
    print("$ cat /sys/kernel/debug/extfrag/extfrag_index")
    print(a.extfragIndex())
    print("$ cat /sys/kernel/debug/extfrag/unusable_index")
    print(a.unusableIndex(), terminator: "")
  }
}

/// `pagealloc map --svg FILE`: the fragmentation map after a workload.
struct Map: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Write the fragmentation map (pageblock grid and free pages per order) as SVG after a workload.")
  @OptionGroup var options: WorkloadOptions
  @Option(help: "The SVG file to write.") var svg: String

  func run() throws {
    let (a, compaction) = try options.makeAllocator()
    let m = FragmentationMap(allocator: a)
    let after = options.compact == .none ? "" : "; then \(options.compact.rawValue) compaction"
    try writeText(
      m.svg(title: "pagealloc map: workload \(options.workload.rawValue) (\(options.workload.summary))\(after)"),
      to: svg)
    let s = a.compactionStatistics()
    print("wrote \(svg): \(m.cells.count) pageblocks, unusable free index at order 9: \(m.unusableFreeIndex(order: 9))")
    print(
      "\(compaction); pgmigrate_success \(s.pgmigrateSuccess), compact_migrate_scanned \(s.compactMigrateScanned), compact_free_scanned \(s.compactFreeScanned)"
    )
  }
}

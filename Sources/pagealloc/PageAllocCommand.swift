import ArgumentParser
import PageAlloc
import PageAllocBench
import PageAllocStress
import PageAllocTrace
import PageAllocVMalloc
import PageAllocViews
import _PageAllocUtilities

@main
struct PageAllocCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "pagealloc",
    abstract: "The Linux zoned buddy page allocator in Swift: benchmarks, trace replay and views.",
    subcommands: [Bench.self, Replay.self, Info.self, Map.self, Mirror.self, Stress.self],
    defaultSubcommand: Bench.self)
}

import ArgumentParser
import PageAlloc

@main
struct PageAllocCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "pagealloc",
    abstract: "The Linux zoned buddy page allocator in Swift: benchmarks, trace replay and views.",
    subcommands: [Bench.self, Stress.self],
    defaultSubcommand: Bench.self)
}

struct Bench: ParsableCommand {
  static let configuration = CommandConfiguration(abstract: "Measure the chunked free against the per-page free.")
  @Option(help: "Iterations of the high-order test.") var iterations = 100_000
  func run() throws {
    let r = try HighOrderBench.run(order: 9, iterations: iterations)
    print(r)
  }
}

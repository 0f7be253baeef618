import ArgumentParser
import Glibc
import PageAlloc
import PageAllocBench
import PageAllocStress
import PageAllocTrace
import PageAllocVMalloc
import PageAllocViews
import _PageAllocUtilities

/// `pagealloc bench [suite]`: the series' measurements side by side.
struct Bench: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Measure the chunked free (free_contig_range) against the per-page free and the floor.",
    discussion: """
      Suites (no name runs them all, in this order):
      \(BenchRegistry.suites.map { "  \(padRight($0.name, 13) + " ")\($0.summary)\n  \(padRight("", 14))default \($0.defaultIterations) \($0.iterationUnit), --quick \($0.quickIterations)" }.joined(separator: "\n"))

      Every suite checks its own result before a figure counts (all pages free again,
      verify() clean, no bad-page report); a wrong result is an error, not a figure.
      Build with `swift build -c release`: debug figures mean nothing.
      """)

  @Argument(help: "The suite to run (all when omitted).")
  var suite: String?

  @Option(help: "Iterations for every selected suite (default: each suite's own).")
  var iterations: Int?

  @Option(help: "Order of the high-order and floor suites (0...10).")
  var order = 9

  @Flag(help: "Run the high-order and floor suites for every order 0...10.")
  var allOrders = false

  @Option(help: "Threads of the multi-threaded order0 variants.")
  var threads = 2

  @Flag(help: "Small iteration counts (CI): the whole run in well under 20 s.")
  var quick = false

  @Option(help: "Write every figure as JSON to this file.")
  var json: String?

  @Option(help: "Write an SVG chart of ns/page against order 0...10 (runs the high-order order sweep).")
  var svg: String?

  @Flag(help: "List the suites and exit.")
  var list = false

  /// A deliberately broken run, to show that every suite's result check works and that a
  /// failed check exits with status 2 (the CLI tests use it).
  @Option(help: .hidden)
  var sabotage: String?

  func validate() throws {
    if let suite, BenchRegistry.suite(named: suite) == nil {
      throw ValidationError(
        "unknown suite '\(suite)'; suites: \(BenchRegistry.suites.map(\.name).joined(separator: ", "))")
    }
    if let iterations, iterations < 1 { throw ValidationError("--iterations must be at least 1, not \(iterations)") }
    if !(0...PageGeometry.maxOrder).contains(order) {
      throw ValidationError("--order must be in 0...\(PageGeometry.maxOrder), not \(order)")
    }
    if !(1...256).contains(threads) { throw ValidationError("--threads must be in 1...256, not \(threads)") }
    if let sabotage, BenchSabotage(rawValue: sabotage) == nil {
      throw ValidationError(
        "--sabotage: \(BenchSabotage.allCases.map(\.rawValue).joined(separator: " or ")), not \(sabotage)")
    }
  }

  func run() throws {
    if list {
      for s in BenchRegistry.suites { print("\(padRight(s.name, 13) + " ")\(s.summary)") }
      return
    }
    var selected = suite.map { [BenchRegistry.suite(named: $0)!] } ?? BenchRegistry.suites
    if svg != nil && !selected.contains(where: { $0.name == BenchSuite.highOrder.name }) {
      selected.insert(.highOrder, at: 0)
    }
    // Open the output files first: a bad path fails now, not after the run.
    let jsonFile = try json.map { try OutputFile($0) }
    let svgFile = try svg.map { try OutputFile($0) }
    let machine = MachineInfo.current()
    print(BenchReport(machine: machine, results: []).machineLine)
    if machine.build != "release" { print("warning: debug build; figures are not meaningful (use -c release)") }

    let progress: (@Sendable (String, Double) -> Void)? = isatty(1) != 0 ? Progress.show : nil
    var base = BenchOptions(
      iterations: iterations, order: order, allOrders: allOrders, threads: threads, quick: quick, progress: nil)
    base.sabotage = sabotage.flatMap { BenchSabotage(rawValue: $0) }
    var results: [BenchResult] = []
    for (i, s) in selected.enumerated() {
      var opts = base
      if svg != nil && s.name == BenchSuite.highOrder.name { opts.allOrders = true }
      if let progress {
        let prefix = "[\(i + 1)/\(selected.count)] "
        opts.progress = { label, fraction in progress(prefix + label, fraction) }
      }
      let mine: [BenchResult]
      do {
        mine = try s.run(opts)
      } catch let e as BenchError {
        Progress.clear(progress != nil)
        printError("pagealloc bench: \(e)")
        throw ExitCode(2)
      }
      Progress.clear(progress != nil)
      if s.name == BenchSuite.highOrder.name { printPatchLines(mine) }
      results += mine
    }
    base.progress = nil

    let report = BenchReport(machine: machine, results: results)
    print("")
    print(report.table(), terminator: "")
    printTargets(report)
    if let jsonFile { try jsonFile.write(report.json()) }
    if let svgFile, let text = report.svg() { try svgFile.write(text) }
  }

  /// The patch's own output, per order.
  func printPatchLines(_ rs: [BenchResult]) {
    for per in rs where per.variant == "per-page" {
      guard let con = rs.first(where: { $0.variant == "contig" && $0.order == per.order }) else { continue }
      let o = per.order ?? 0
      print(
        "high-order order \(o): \(per.iterations) x (alloc_pages + split_page + free of \(per.pagesPerIteration) pages)"
      )
      print("Execution time before: \(per.totalNanoseconds / 1000) usec")
      print("Execution time after: \(con.totalNanoseconds / 1000) usec")
      print(
        "  per iteration \(fixed(per.nsPerIteration / 1000, 3)) -> \(fixed(con.nsPerIteration / 1000, 3)) us, "
          + "ns/page \(fixed(per.nsPerPage, 2)) -> \(fixed(con.nsPerPage, 2)), speedup \(fixed(con.extra["speedup"] ?? 0, 2))x"
      )
    }
  }

  /// The issue's figures to reach, met or missed.
  func printTargets(_ report: BenchReport) {
    let ratios = Dictionary(report.ratios, uniquingKeysWith: { a, _ in a })
    var lines: [String] = []
    func check(_ name: String, _ value: Double?, _ ok: (Double) -> Bool, _ goal: String, _ unit: String) {
      guard let value else { return }
      lines.append("  \(padRight(name, 33) + " ")\(fixed(value, 2))\(unit)  (\(goal)): \(ok(value) ? "met" : "MISSED")")
    }
    check("high-order contig speedup", ratios["high-order.speedup"], { $0 >= 5.6 }, "goal >= 5.6x, aim 10x", "x")
    check("contig / floor (free phase)", ratios["high-order.contig_over_floor"], { $0 <= 1.3 }, "goal <= 1.3", "")
    let frozen = report.results.first { $0.suite == "frozen-range" && $0.variant == "contig" }
    check("frozen-range contig ns/page", frozen?.nsPerPage, { $0 <= 2 }, "goal <= 2 ns", " ns")
    let o0 = report.results.first { $0.suite == "order0" && $0.variant == "pcp" }
    check("order0 ns per alloc+free pair", o0?.nsPerIteration, { $0 <= 25 }, "goal <= 25 ns, 1 thread", " ns")
    check("order0 handle / PFN API", ratios["order0.handle_over_pfn"], { $0 <= 1.05 }, "goal <= 1.05", "")
    check("high-order handle / contig", ratios["high-order.handle_over_contig"], { $0 <= 1.05 }, "goal <= 1.05", "")
    check("thp order-9 pair / order-0 pair", ratios["thp.pair_over_order0"], { $0 <= 1.5 }, "goal <= 1.5", "")
    if !lines.isEmpty { print("\ntargets\n" + lines.joined(separator: "\n")) }
  }

}

/// An output file opened (truncated) before the run, written after it.
final class OutputFile {
  let path: String

  /// Creates (truncates) the file now, so a path that cannot be written fails before the
  /// run rather than after it.
  init(_ path: String) throws {
    self.path = path
    try writeText("", to: path)
  }

  func write(_ text: String) throws {
    try writeText(text, to: path)
    print("wrote \(path)")
  }
}

/// The one-line progress display (stdout is a terminal only).
enum Progress {
  @Sendable static func show(_ label: String, _ fraction: Double) {
    let pct = Int((min(max(fraction, 0), 1) * 100).rounded())
    writeOut("\r\u{1B}[K\(label)  \(pct)%")
  }

  static func clear(_ on: Bool) {
    if on { writeOut("\r\u{1B}[K") }
  }

  static func writeOut(_ s: String) { writeStandardOutput(s) }
}

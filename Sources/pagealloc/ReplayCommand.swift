import ArgumentParser
import Glibc
import PageAlloc
import PageAllocBench
import PageAllocStress
import PageAllocTrace
import PageAllocVMalloc
import PageAllocViews
import _PageAllocUtilities

/// `pagealloc replay FILE`: replays a kernel kmem trace (see the PageAllocTrace article,
/// Sources/PageAllocTrace/PageAllocTrace.docc/ReplayingKernelTraces.md).
struct Replay: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Replay a kernel kmem trace (ftrace trace, trace-cmd report or perf script; .gz accepted).")

  @Argument(help: "The trace file.") var file: String
  @Option(help: "The zone's pfns, START-END (decimal or 0x hex). Default: the trace's pfns rounded to 1024.")
  var zone: String?
  @Flag(help: "Stop at the first anomaly with FILE:LINE: reason and exit status 1.") var strict = false
  @Option(help: "Write the figures as JSON to this file.") var json: String?
  @Option(help: "Write the fragmentation map (SVG) of the final state to this file.") var map: String?
  @Flag(
    help:
      "Predict each decision of the kernel's (pcp allocations, refills, drains, buddy allocations) with the model before applying it, and print the hit rates."
  )
  var predict = false
  @Option(
    help:
      "With --predict: the traced machine's /proc/zoneinfo at the trace's start, for the pcp high, batch and counts. Default: STEM.zoneinfo-before.txt beside the trace, if present."
  )
  var zoneinfo: String?
  @Flag(
    help:
      "With --predict: take the pages no event names as free at the start (a trace that began on an empty zone); by default they are held allocated."
  )
  var unnamedFree = false
  @Option(
    help:
      "Write an SVG of the free memory over trace time: free pages per order, the unusable free index at pageblock order, pcp pages, extfrag events and anomalies."
  )
  var timeline: String?

  func run() throws {
    var options = TraceReplay.Options(
      strict: strict, predict: predict, zoneinfo: zoneinfo, timeline: timeline != nil, unnamedFree: unnamedFree)
    if let zone {
      guard let z = TraceReplay.parseZone(zone) else {
        throw ValidationError("--zone \(zone): expected START-END pfns with START < END, e.g. 0x100000-0x180000")
      }
      options.zone = z
    }
    let result: (report: ReplayReport, allocator: PageAllocator)
    do {
      result = try TraceReplay.run(path: file, options: options)
    } catch {
      printError("\(error)")
      throw ExitCode(1)
    }
    print(result.report.text, terminator: "")
    if let json {
      try writeText(result.report.json, to: json)
    }
    if let timeline, let t = result.report.timeline {
      try writeText(
        t.svg(title: "pagealloc replay \(file)\(predict ? " --predict" : ""): free memory over time"), to: timeline)
    }
    if let map {
      let svg = FragmentationMap(allocator: result.allocator, allocatedByType: result.report.allocatedByType).svg(
        title: "pagealloc replay \(file)")
      try writeText(svg, to: map)
    }
  }
}

/// Writes a text file (standard output for `-`); a failure is one clear line and exit
/// status 1.
func writeText(_ text: String, to path: String) throws(ExitCode) {
  do {
    try writeTextFile(text, to: path)
  } catch {
    printError("\(error)")
    throw ExitCode(1)
  }
}

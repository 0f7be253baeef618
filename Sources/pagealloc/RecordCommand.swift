import ArgumentParser
import PageAllocTrace
import _PageAllocUtilities

/// `pagealloc record -o FILE [--buffer-kb N] -- COMMAND [ARGS...]`: records a kmem trace
/// of one command through tracefs (see the PageAllocTrace article "Recording a kernel
/// trace", Sources/PageAllocTrace/PageAllocTrace.docc/RecordingKernelTraces.md).
struct Record: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Record a kmem trace of a command through tracefs (root), for replay --predict.",
    discussion: """
      Enables mm_page_alloc, mm_page_free, mm_page_free_batched, mm_page_pcpu_drain,
      mm_page_alloc_zone_locked and mm_page_alloc_extfrag, runs COMMAND, and writes the
      trace (gzip when FILE ends in .gz) with /proc/buddyinfo and /proc/zoneinfo before and
      after beside it. The tracing state found is put back on every way out, Ctrl-C
      included.
      """)

  @Option(name: .shortAndLong, help: "The trace file to write (.gz: gzip).") var output: String
  @Option(name: .customLong("buffer-kb"), help: "The ring buffer per CPU, in kB.") var bufferKB = 65536
  @Option(help: ArgumentHelp("Where tracefs is (a test tree: no root needed).", visibility: .hidden))
  var tracefs = "/sys/kernel/tracing"
  @Option(help: ArgumentHelp("Where /proc is.", visibility: .hidden)) var proc = "/proc"
  @Argument(parsing: .postTerminator, help: "The command to record and its arguments.") var command: [String] = []

  func validate() throws {
    guard !command.isEmpty else {
      throw ValidationError("give the command after --: pagealloc record -o FILE -- COMMAND")
    }
    guard bufferKB >= 4 else { throw ValidationError("--buffer-kb \(bufferKB): at least 4") }
  }

  func run() throws {
    let recorder = TraceRecorder(
      tracefs: tracefs, proc: proc, bufferKB: bufferKB, requireRoot: tracefs == "/sys/kernel/tracing")
    do {
      let report = try recorder.record(output: output, command: command)
      print(report.text, terminator: "")
    } catch {
      printError("pagealloc record: \(error)")
      throw ExitCode(error.exitStatus)
    }
  }
}

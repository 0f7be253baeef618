import Glibc
import Testing

import PageAlloc
import _PageAllocUtilities
@testable import PageAllocTrace

/// Whether this process may record for real: root, and a kernel with tracefs.
let canRecordForReal: Bool =
  geteuid() == 0 && ((try? readTextFile("/proc/filesystems")) ?? "").contains("tracefs")
  && access("/sys/kernel/tracing", F_OK) == 0

/// A directory tree shaped like tracefs (and one like /proc), for the recorder without
/// root: plain files where tracefs has its control files.
struct FakeTracefs {
  let dir: String
  var tracefs: String { dir + "/tracing" }
  var proc: String { dir + "/proc" }

  init() {
    var template = Array("/tmp/pagealloc-tracefs-XXXXXX".utf8CString)
    dir = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) }
    mkdir(tracefs, 0o755)
    mkdir(proc, 0o755)
    mkdir(tracefs + "/events", 0o755)
    mkdir(tracefs + "/events/kmem", 0o755)
    for e in TraceRecorder.events + ["kmalloc"] {
      mkdir(tracefs + "/events/kmem/" + e, 0o755)
      put("tracing/events/kmem/\(e)/enable", "0\n")
    }
    put("tracing/tracing_on", "1\n")
    put("tracing/buffer_size_kb", "7 (expanded: 1408)\n")
    put("tracing/current_tracer", "nop\n")
    put("tracing/trace", "# tracer: nop\n#\n")
    put("proc/buddyinfo", "Node 0, zone   Normal   1 2 3 4 5 6 7 8 9 10 11\n")
    put("proc/zoneinfo", "Node 0, zone   Normal\n")
    put("proc/filesystems", "nodev\ttracefs\n")
  }

  func put(_ name: String, _ text: String) {
    try? writeTextFile(text, to: dir + "/" + name)
  }

  func get(_ name: String) -> String { (try? readTextFile(dir + "/" + name)) ?? "<missing>" }

  func remove() { _ = system("rm -rf '\(dir)'") }

  var recorder: TraceRecorder { TraceRecorder(tracefs: tracefs, proc: proc, bufferKB: 4096, requireRoot: false) }
}

@Suite(.serialized) struct RecorderTests {
  static let sample = """
    # tracer: nop
    #
    # entries-in-buffer/entries-written: 3/5   #P:2
    #
                bash-1   [000] .....  10.000000: mm_page_alloc: page=000000008a501c6b pfn=0x1000 order=0 migratetype=0 gfp_flags=GFP_KERNEL
                bash-1   [000] .....  10.000100: mm_page_alloc: page=000000008a501c6c pfn=0x1001 order=0 migratetype=0 gfp_flags=GFP_KERNEL
                bash-1   [001] .....  10.000200: mm_page_free: page=000000008a501c6b pfn=0x1000 order=0

    """

  @Test func settingsAndRestore() throws {
    let f = FakeTracefs()
    defer { f.remove() }
    let r = f.recorder
    let s = try r.settings()
    #expect(s.tracingOn == "1" && s.bufferSizeKB == "1408" && s.currentTracer == "nop")
    #expect(s.eventEnables.count == 6 && s.eventEnables.values.allSatisfy { $0 == "0" })
    f.put("tracing/tracing_on", "0\n")
    f.put("tracing/buffer_size_kb", "65536\n")
    f.put("tracing/events/kmem/mm_page_alloc/enable", "1\n")
    f.put("tracing/trace", "lots\n")
    try r.restore(s)
    #expect(try r.settings() == s)
    #expect(f.get("tracing/buffer_size_kb") == "1408\n")
    #expect(f.get("tracing/trace") == "\n")
    #expect(TraceRecorder.bufferSize("2051") == "2051")
  }

  @Test(arguments: ["out.trace.gz", "out.trace"])
  func recordsACommand(name: String) throws {
    let f = FakeTracefs()
    defer { f.remove() }
    f.put("sample.txt", RecorderTests.sample)
    f.put("tracing/current_tracer", "function\n")
    let before = try f.recorder.settings()
    let out = f.dir + "/" + name
    // The command plays the kernel: it writes the events, and notes what it saw enabled.
    let script =
      "cat '\(f.dir)/sample.txt' > '\(f.tracefs)/trace'; cat '\(f.tracefs)/events/kmem/mm_page_alloc_extfrag/enable' '\(f.tracefs)/tracing_on' '\(f.tracefs)/buffer_size_kb' '\(f.tracefs)/current_tracer' > '\(f.dir)/during'"
    let report = try f.recorder.record(output: out, command: ["sh", "-c", script])
    #expect(f.get("during") == "1\n1\n4096\nnop\n")
    #expect(report.entriesInBuffer == 3 && report.entriesWritten == 5 && report.lostEvents == 2)
    #expect(report.traceBytes == RecorderTests.sample.utf8.count)
    #expect(
      report.companions
        == ["buddyinfo-before", "buddyinfo-after", "zoneinfo-before", "zoneinfo-after"].map {
          f.dir + "/out.\($0).txt"
        })
    #expect(f.get("out.buddyinfo-before.txt").hasPrefix("Node 0, zone   Normal"))
    #expect(report.text.contains("2 lost to overwrite"))
    #expect(!report.mountedTracefs)
    let replayed = try TraceReplay.run(path: out).report
    #expect(replayed.eventsApplied == 3)
    #expect(try f.recorder.settings() == before)
    #expect(f.get("tracing/current_tracer") == "function\n")
  }

  @Test func aFailingCommandLeavesNothingEnabled() throws {
    let f = FakeTracefs()
    defer { f.remove() }
    let before = try f.recorder.settings()
    let out = f.dir + "/x.trace.gz"
    #expect {
      try f.recorder.record(output: out, command: ["sh", "-c", "exit 3"])
    } throws: { ($0 as? RecordError)?.exitStatus == 3 }
    #expect(try f.recorder.settings() == before)
    #expect(access(out, F_OK) != 0)
    #expect {
      try f.recorder.record(output: out, command: ["/nonexistent/command"])
    } throws: { ($0 as? RecordError)?.exitStatus == 127 }
    #expect(try f.recorder.settings() == before)
    // A missing event: refused before anything changes.
    _ = system("rm -rf '\(f.tracefs)/events/kmem/mm_page_alloc_extfrag'")
    #expect {
      try f.recorder.record(output: out, command: ["true"])
    } throws: { ($0 as? RecordError)?.message.contains("mm_page_alloc_extfrag") == true }
    #expect(f.get("tracing/tracing_on") == "1\n")
  }

  /// SIGINT while the command runs: passed on to it, the state put back, status 130.
  @Test func interruptRestores() throws {
    let f = FakeTracefs()
    defer { f.remove() }
    // Off at first, so that "1" means the recording (its handler installed) turned it on.
    f.put("tracing/tracing_on", "0\n")
    let before = try f.recorder.settings()
    let result = LockedState<RecordError?>(nil)
    let recorder = f.recorder
    let out = f.dir + "/x.trace.gz"
    let on = f.tracefs + "/tracing_on"
    try runOnThreads(2) { i in
      if i == 0 {
        do {
          _ = try recorder.record(output: out, command: ["sleep", "30"])
        } catch {
          result.withLock { $0 = error as? RecordError }
        }
      } else {
        // Wait for the recording to switch tracing on, then interrupt the process.
        func finished() -> Bool { result.withLock { (r: inout RecordError?) -> Bool in r != nil } }
        var waited = 0
        while (try? readTextFile(on)) != "1\n" && !finished() && waited < 2000 {
          usleep(5000)
          waited += 1
        }
        if (try? readTextFile(on)) == "1\n" && !finished() {
          usleep(50_000)
          kill(getpid(), SIGINT)
        }
      }
    }
    let error = try #require(result.withLock { (r: inout RecordError?) -> RecordError? in r })
    #expect(error.exitStatus == 130)
    #expect(error.message.contains("interrupted by SIGINT"))
    #expect(try f.recorder.settings() == before)
    #expect(access(out, F_OK) != 0)
  }

  /// Records a small command on this machine's real tracefs and predicts it.
  @Test(.enabled(if: canRecordForReal, "needs root and a kernel with tracefs"))
  func recordsAndPredictsForReal() throws {
    let r = TraceRecorder(bufferKB: 8192)
    let wasMounted = access("/sys/kernel/tracing/tracing_on", F_OK) == 0
    let before = wasMounted ? try r.settings() : nil
    let out = "/tmp/pagealloc-record-test-\(getpid()).trace.gz"
    defer {
      for s in ["trace.gz", "buddyinfo-before.txt", "buddyinfo-after.txt", "zoneinfo-before.txt", "zoneinfo-after.txt"]
      {
        unlink("/tmp/pagealloc-record-test-\(getpid()).\(s)")
      }
    }
    let report = try r.record(
      output: out, command: ["sh", "-c", "ls -lR /usr/lib > /dev/null"])
    #expect(report.entriesWritten ?? 0 > 0)
    #expect(report.mountedTracefs == !wasMounted)
    #expect((access("/sys/kernel/tracing/tracing_on", F_OK) == 0) == wasMounted)
    if let before { #expect(try r.settings() == before) }
    let (replayed, _) = try TraceReplay.run(path: out, options: .init(predict: true))
    let p = try #require(replayed.prediction)
    #expect(p.tuningSource.contains("zoneinfo-before"))
    #expect(p.score(.pcpAlloc).predicted > 0)
    #expect(replayed.text.contains("pcp_alloc"))
  }
}

import CPageAllocGzip
import Glibc
import _PageAllocUtilities

/// A recording that could not be made, or was interrupted: one line, and the exit status
/// `pagealloc record` ends with. The tracing state was put back first.
public struct RecordError: Error, CustomStringConvertible, Sendable {
  public var message: String
  public var exitStatus: Int32
  public init(_ message: String, exitStatus: Int32 = 1) {
    self.message = message
    self.exitStatus = exitStatus
  }
  public var description: String { message }
}

/// The tracefs settings a recording changes, as it found them.
public struct TracefsSettings: Equatable, Sendable {
  public var tracingOn: String
  /// The buffer size to write back, in kB (for a buffer not yet expanded, the size it
  /// would expand to: the smaller size it reports cannot be set).
  public var bufferSizeKB: String
  public var currentTracer: String
  /// `events/kmem/<event>/enable` of each recorded event.
  public var eventEnables: [String: String]
}

/// What a recording wrote.
public struct RecordReport: Sendable {
  public var output: String
  /// The /proc snapshots written beside the trace.
  public var companions: [String]
  /// The trace header's entries-in-buffer/entries-written (nil when absent).
  public var entriesInBuffer: Int?
  public var entriesWritten: Int?
  public var traceBytes: Int
  public var seconds: Double
  /// Whether the recording mounted tracefs (and unmounted it again).
  public var mountedTracefs: Bool
  public var command: [String]

  /// Events the ring buffer overwrote before they were read (written but not in the
  /// buffer), or nil when the header does not say.
  public var lostEvents: Int? {
    guard let b = entriesInBuffer, let w = entriesWritten else { return nil }
    return max(w - b, 0)
  }

  /// What `pagealloc record` prints.
  public var text: String {
    var s =
      "recorded `\(command.joined(separator: " "))` in \(fixed(seconds, 2)) s to \(output) (\(traceBytes) bytes of trace text)\n"
    if let b = entriesInBuffer, let w = entriesWritten {
      let lost = lostEvents ?? 0
      s +=
        "events: \(b) in the buffer of \(w) written: "
        + (lost == 0 ? "none lost\n" : "\(lost) lost to overwrite (a larger --buffer-kb keeps them)\n")
    } else {
      s += "events: the trace header gives no entries-in-buffer/entries-written count\n"
    }
    s += "beside it: " + companions.joined(separator: ", ") + "\n"
    if mountedTracefs { s += "tracefs was not mounted: mounted for the recording and unmounted again\n" }
    s += "tracing state put back as it was (event enables, buffer size, current_tracer, tracing_on)\n"
    return s
  }
}

/// Records a kmem trace of one command through tracefs: `pagealloc record`.
///
/// The kernel's tracing state is shared by the whole machine, so a recording puts back
/// what it found on every way out: the six kmem events' enables, `buffer_size_kb`,
/// `current_tracer` and `tracing_on`, and unmounts tracefs if it mounted it. SIGINT,
/// SIGTERM and SIGHUP during a recording are caught (a C handler writes to a pipe the
/// recorder polls), passed on to the command, and end the recording with the state put
/// back and no trace written.
public struct TraceRecorder: Sendable {
  /// The kmem events recorded: every event the prediction reads.
  public static let events = [
    "mm_page_alloc", "mm_page_free", "mm_page_free_batched", "mm_page_pcpu_drain", "mm_page_alloc_zone_locked",
    "mm_page_alloc_extfrag",
  ]

  /// Where tracefs is (or is mounted): a directory tree of the same shape in tests.
  public var tracefs: String
  /// Where /proc is (buddyinfo and zoneinfo are read from it).
  public var proc: String
  /// The ring buffer per CPU, in kB.
  public var bufferKB: Int
  /// Refuse to run without root (the real tracefs is root's; a test tree is not).
  public var requireRoot: Bool

  public init(
    tracefs: String = "/sys/kernel/tracing", proc: String = "/proc", bufferKB: Int = 65536,
    requireRoot: Bool = true
  ) {
    self.tracefs = tracefs
    self.proc = proc
    self.bufferKB = bufferKB
    self.requireRoot = requireRoot
  }

  // MARK: - tracefs files

  func path(_ name: String) -> String { tracefs + "/" + name }
  static func enablePath(_ event: String) -> String { "events/kmem/\(event)/enable" }

  func read(_ name: String) throws(RecordError) -> String {
    let s: String
    do { s = try readTextFile(path(name)) } catch { throw RecordError("cannot read \(error)") }
    return String(s.drop { $0 == " " || $0 == "\n" }.reversed().drop { $0 == " " || $0 == "\n" }.reversed())
  }

  func write(_ name: String, _ value: String) throws(RecordError) {
    let p = path(name)
    let fd = open(p, O_WRONLY | O_TRUNC | O_CLOEXEC)
    guard fd >= 0 else { throw RecordError("cannot write \(p): \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    var text = value + "\n"
    let n = text.withUTF8 { Glibc.write(fd, $0.baseAddress, $0.count) }
    if n < 0 { throw RecordError("cannot write '\(value)' to \(p): \(String(cString: strerror(errno)))") }
  }

  /// The settings a recording changes, as they are now.
  public func settings() throws(RecordError) -> TracefsSettings {
    var enables: [String: String] = [:]
    for e in TraceRecorder.events where access(path(TraceRecorder.enablePath(e)), F_OK) == 0 {
      enables[e] = try read(TraceRecorder.enablePath(e))
    }
    return TracefsSettings(
      tracingOn: try read("tracing_on"), bufferSizeKB: TraceRecorder.bufferSize(try read("buffer_size_kb")),
      currentTracer: try read("current_tracer"), eventEnables: enables)
  }

  /// The kB to write back for what `buffer_size_kb` reads: `7 (expanded: 1408)` is 1408.
  static func bufferSize(_ s: String) -> String {
    if let r = s.firstRange(of: "expanded:") {
      let digits = s[r.upperBound...].drop { $0 == " " }.prefix { $0.isNumber }
      if !digits.isEmpty { return String(digits) }
    }
    return String(s.prefix { $0.isNumber })
  }

  /// Puts `s` back: events first (nothing more is recorded), the trace emptied, then the
  /// buffer size, the tracer and tracing_on. Every step is tried; the first failure is
  /// thrown after the others ran.
  public func restore(_ s: TracefsSettings) throws(RecordError) {
    var first: RecordError?
    func attempt(_ name: String, _ value: String) {
      do { try write(name, value) } catch { if first == nil { first = error } }
    }
    attempt("tracing_on", "0")
    for (e, v) in s.eventEnables.sorted(by: { $0.key < $1.key }) {
      attempt(TraceRecorder.enablePath(e), v.hasPrefix("1") ? "1" : "0")
    }
    attempt("trace", "")
    if !s.bufferSizeKB.isEmpty { attempt("buffer_size_kb", s.bufferSizeKB) }
    if let now = try? read("current_tracer"), now != s.currentTracer { attempt("current_tracer", s.currentTracer) }
    attempt("tracing_on", s.tracingOn.hasPrefix("1") ? "1" : "0")
    if let first { throw first }
  }

  // MARK: - Recording

  /// Records `command` (run with the caller's environment and standard streams) into
  /// `output` (gzip when it ends in .gz), with /proc/buddyinfo and /proc/zoneinfo before
  /// and after beside it (`STEM.buddyinfo-before.txt`, ...; see
  /// ``TraceReplay/companionStem(of:)``).
  public func record(output: String, command: [String]) throws(RecordError) -> RecordReport {
    guard !command.isEmpty else { throw RecordError("no command to record (pagealloc record -o FILE -- COMMAND ...)") }
    if requireRoot && geteuid() != 0 {
      throw RecordError("needs root (tracefs at \(tracefs) belongs to root)")
    }
    guard cpa_signal_pipe_install() >= 0 else {
      throw RecordError("cannot catch SIGINT: \(String(cString: strerror(errno)))")
    }
    defer { cpa_signal_pipe_remove() }
    let t0 = monotonicNanoseconds()
    let mounted = try mountIfNeeded()
    defer { if mounted { umount2(tracefs, 0) } }
    for e in TraceRecorder.events where access(path(TraceRecorder.enablePath(e)), F_OK) != 0 {
      throw RecordError("this kernel has no kmem:\(e) trace event (\(path(TraceRecorder.enablePath(e))) is missing)")
    }
    let saved = try settings()
    var restored = false
    defer { if !restored { try? restore(saved) } }
    func interrupted() throws(RecordError) {
      let sig = cpa_signal_pipe_take()
      if sig != 0 {
        restored = true
        try restore(saved)
        throw RecordError(
          "interrupted by \(TraceRecorder.signalName(sig)): tracing state put back, no trace written",
          exitStatus: 128 + Int32(sig))
      }
    }
    try write("tracing_on", "0")
    if saved.currentTracer != "nop" { try write("current_tracer", "nop") }
    try write("buffer_size_kb", String(bufferKB))
    try write("trace", "")
    for e in TraceRecorder.events { try write(TraceRecorder.enablePath(e), "1") }
    let buddyBefore = (try? readTextFile(proc + "/buddyinfo")) ?? ""
    let zoneBefore = (try? readTextFile(proc + "/zoneinfo")) ?? ""
    try interrupted()
    try write("tracing_on", "1")
    var caught: Int32 = 0
    let status = try run(command, caught: &caught)
    try write("tracing_on", "0")
    let buddyAfter = (try? readTextFile(proc + "/buddyinfo")) ?? ""
    let zoneAfter = (try? readTextFile(proc + "/zoneinfo")) ?? ""
    if caught != 0 {
      restored = true
      try restore(saved)
      throw RecordError(
        "interrupted by \(TraceRecorder.signalName(caught)): tracing state put back, no trace written",
        exitStatus: 128 + caught)
    }
    if case .signalled(let sig) = status {
      restored = true
      try restore(saved)
      throw RecordError(
        "`\(command.joined(separator: " "))` was killed by \(TraceRecorder.signalName(sig)): tracing state put back, no trace written",
        exitStatus: 128 + sig)
    }
    if case .exited(let code) = status, code != 0 {
      restored = true
      try restore(saved)
      let why = code == 127 ? " (not found or not executable)" : ""
      throw RecordError(
        "`\(command.joined(separator: " "))` exited with status \(code)\(why): tracing state put back, no trace written",
        exitStatus: code)
    }
    let (bytes, header) = try copyTrace(to: output)
    try interrupted()
    let stem = TraceReplay.companionStem(of: output)
    var companions: [String] = []
    for (suffix, text) in [
      ("buddyinfo-before", buddyBefore), ("buddyinfo-after", buddyAfter), ("zoneinfo-before", zoneBefore),
      ("zoneinfo-after", zoneAfter),
    ] {
      let p = "\(stem).\(suffix).txt"
      do { try writeTextFile(text, to: p) } catch { throw RecordError("\(error)") }
      companions.append(p)
    }
    restored = true
    try restore(saved)
    return RecordReport(
      output: output, companions: companions, entriesInBuffer: header.entriesInBuffer,
      entriesWritten: header.entriesWritten, traceBytes: bytes,
      seconds: Double(monotonicNanoseconds() &- t0) / 1e9, mountedTracefs: mounted, command: command)
  }

  static func signalName(_ sig: Int32) -> String {
    switch sig {
    case SIGINT: "SIGINT"
    case SIGTERM: "SIGTERM"
    case SIGHUP: "SIGHUP"
    default: "signal \(sig)"
    }
  }

  /// Mounts tracefs at ``tracefs`` when there is no tracefs there; returns whether it did.
  func mountIfNeeded() throws(RecordError) -> Bool {
    if access(path("tracing_on"), F_OK) == 0 { return false }
    let filesystems = (try? readTextFile(proc + "/filesystems")) ?? ""
    guard filesystems.contains("tracefs") else {
      throw RecordError("this kernel has no tracefs (\(proc)/filesystems does not list it)")
    }
    if mount("nodev", tracefs, "tracefs", 0, nil) != 0 {
      throw RecordError("cannot mount tracefs at \(tracefs): \(String(cString: strerror(errno)))")
    }
    guard access(path("tracing_on"), F_OK) == 0 else {
      umount2(tracefs, 0)
      throw RecordError("tracefs mounted at \(tracefs) has no tracing_on")
    }
    return true
  }

  enum Status {
    case exited(Int32)
    case signalled(Int32)
  }

  /// Runs `command` (searched in PATH) and waits for it, passing on SIGINT, SIGTERM and
  /// SIGHUP (a second one kills it); `caught` is the first such signal, or 0.
  func run(_ command: [String], caught: inout Int32) throws(RecordError) -> Status {
    var attr = posix_spawnattr_t()
    posix_spawnattr_init(&attr)
    defer { posix_spawnattr_destroy(&attr) }
    // The child gets the default dispositions and an empty mask, whatever ours are.
    var dflt = sigset_t()
    sigemptyset(&dflt)
    for s in [SIGINT, SIGTERM, SIGHUP, SIGPIPE] { sigaddset(&dflt, s) }
    var empty = sigset_t()
    sigemptyset(&empty)
    posix_spawnattr_setsigdefault(&attr, &dflt)
    posix_spawnattr_setsigmask(&attr, &empty)
    posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))
    var argv: [UnsafeMutablePointer<CChar>?] = command.map { strdup($0) }
    argv.append(nil)
    defer { for p in argv { free(p) } }
    var pid: pid_t = 0
    let rc = posix_spawnp(&pid, command[0], nil, &attr, argv, environ)
    if rc != 0 {
      throw RecordError("cannot run \(command[0]): \(String(cString: strerror(rc)))", exitStatus: 127)
    }
    var forwarded = 0
    let fd = cpa_signal_pipe_install()
    while true {
      var wstatus: Int32 = 0
      let w = waitpid(pid, &wstatus, WNOHANG)
      if w == pid {
        if wstatus & 0x7F == 0 { return .exited((wstatus >> 8) & 0xFF) }
        // Killed by a signal: the one we passed on, or its own.
        return .signalled(wstatus & 0x7F)
      }
      if w < 0 && errno != EINTR { throw RecordError("waiting for \(command[0]): \(String(cString: strerror(errno)))") }
      var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
      _ = poll(&p, 1, 50)
      let sig = cpa_signal_pipe_take()
      if sig != 0 {
        if caught == 0 { caught = Int32(sig) }
        kill(pid, forwarded == 0 ? Int32(sig) : SIGKILL)
        forwarded += 1
      }
    }
  }

  /// Copies the `trace` file to `output`, gzip'd when it ends in .gz; returns the bytes of
  /// text and the header's entry counts.
  func copyTrace(to output: String) throws(RecordError) -> (Int, ParsedTrace) {
    let src = open(path("trace"), O_RDONLY | O_CLOEXEC)
    guard src >= 0 else { throw RecordError("cannot read \(path("trace")): \(String(cString: strerror(errno)))") }
    defer { close(src) }
    var err = [CChar](repeating: 0, count: 256)
    func message() -> String { String(decoding: err.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) }
    let gz = output.hasSuffix(".gz")
    var gzh: UnsafeMutableRawPointer?
    var dst: Int32 = -1
    if gz {
      gzh = cpa_gz_create(output, 6, &err, err.count)
      if gzh == nil { throw RecordError("cannot write \(output): \(message())") }
    } else {
      dst = open(output, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
      if dst < 0 { throw RecordError("cannot write \(output): \(String(cString: strerror(errno)))") }
    }
    var header = ParsedTrace()
    var total = 0
    var headerText: [UInt8] = []
    let cap = 1 << 20
    let buf = UnsafeMutablePointer<UInt8>.allocate(capacity: cap)
    defer { buf.deallocate() }
    var failure: RecordError?
    while failure == nil {
      let n = Glibc.read(src, buf, cap)
      if n < 0 {
        if errno == EINTR { continue }
        failure = RecordError("reading \(path("trace")): \(String(cString: strerror(errno)))")
        break
      }
      if n == 0 { break }
      if headerText.count < 4096 { headerText.append(contentsOf: UnsafeBufferPointer(start: buf, count: min(n, 4096))) }
      total += n
      if let gzh {
        if cpa_gz_write(gzh, buf, n, &err, err.count) != 0 { failure = RecordError("writing \(output): \(message())") }
      } else {
        var done = 0
        while done < n {
          let w = Glibc.write(dst, buf + done, n - done)
          if w < 0 {
            if errno == EINTR { continue }
            failure = RecordError("writing \(output): \(String(cString: strerror(errno)))")
            break
          }
          done += w
        }
      }
    }
    if let gzh {
      if cpa_gz_finish(gzh, &err, err.count) != 0 && failure == nil {
        failure = RecordError("writing \(output): \(message())")
      }
    } else {
      close(dst)
    }
    if let failure {
      unlink(output)
      throw failure
    }
    // The header is in the first whole lines.
    if let last = headerText.lastIndex(of: 0x0A) {
      headerText.withUnsafeBytes { KmemTraceParser.feed(UnsafeRawBufferPointer(rebasing: $0[0...last]), &header) }
    }
    return (total, header)
  }
}

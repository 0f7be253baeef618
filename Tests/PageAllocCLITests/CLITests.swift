import Glibc
import PageAlloc
import PageAllocViews
import Testing

/// The first tag of `xml` that is not closed in order (or a closing tag with no opening
/// one), or nil when every element is closed where it should be.
func unbalancedTag(_ xml: String) -> String? {
  var open: [Substring] = []
  var rest = xml[...]
  while let lt = rest.firstIndex(of: "<") {
    guard let gt = rest[lt...].firstIndex(of: ">") else { return "unterminated tag" }
    let tag = rest[rest.index(after: lt)..<gt]
    rest = rest[rest.index(after: gt)...]
    if tag.hasPrefix("?") || tag.hasPrefix("!") || tag.hasSuffix("/") { continue }
    if tag.hasPrefix("/") {
      guard let last = open.popLast(), last == tag.dropFirst() else { return String(tag) }
    } else {
      open.append(tag.prefix { $0 != " " && $0 != "\n" })
    }
  }
  return open.last.map(String.init)
}

/// What one run of the tool gave.
struct ToolRun {
  var status: Int32
  var stdout: String
  var stderr: String
}

/// The `pagealloc` binary built next to this test bundle (`.build/<triple>/<config>/`).
let toolPath: String = {
  var buf = [CChar](repeating: 0, count: 4096)
  let n = readlink("/proc/self/exe", &buf, buf.count - 1)
  let exe = n > 0 ? String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : ""
  return String(exe[..<(exe.lastIndex(of: "/") ?? exe.startIndex)]) + "/pagealloc"
}()

/// The repository's root, from this file's path.
let repoRoot: String = {
  let file = "\(#filePath)"
  return file.firstRange(of: "/Tests/").map { String(file[..<$0.lowerBound]) } ?? "."
}()

func readFile(_ path: String) -> String? {
  guard let f = fopen(path, "r") else { return nil }
  defer { fclose(f) }
  var out: [UInt8] = []
  var chunk = [UInt8](repeating: 0, count: 1 << 16)
  while true {
    let n = fread(&chunk, 1, chunk.count, f)
    if n <= 0 { break }
    out += chunk[0..<n]
  }
  return String(decoding: out, as: UTF8.self)
}

func writeFile(_ path: String, _ text: String) {
  let f = fopen(path, "w")!
  _ = text.withCString { fputs($0, f) }
  fclose(f)
}

/// A fresh temporary path for this test process.
func tempPath(_ name: String) -> String { "/tmp/pagealloc-cli-\(getpid())-\(name)" }

/// Runs the tool with `args`; its standard output and error go to files read afterwards.
func runTool(_ args: [String], sourceLocation: SourceLocation = #_sourceLocation) throws -> ToolRun {
  try #require(
    access(toolPath, X_OK) == 0, "no pagealloc binary at \(toolPath): build the package first (swift build)",
    sourceLocation: sourceLocation)
  let out = tempPath("stdout-\(UInt32.random(in: 0...UInt32.max))")
  let err = out + ".err"
  defer {
    unlink(out)
    unlink(err)
  }
  var actions = posix_spawn_file_actions_t()
  posix_spawn_file_actions_init(&actions)
  defer { posix_spawn_file_actions_destroy(&actions) }
  posix_spawn_file_actions_addopen(&actions, 1, out, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
  posix_spawn_file_actions_addopen(&actions, 2, err, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
  let argv: [UnsafeMutablePointer<CChar>?] = ([toolPath] + args).map { strdup($0) } + [nil]
  defer { for a in argv { free(a) } }
  var pid = pid_t()
  let rc = posix_spawn(&pid, toolPath, &actions, nil, argv, environ)
  try #require(rc == 0, "posix_spawn failed: \(rc)", sourceLocation: sourceLocation)
  var status: Int32 = 0
  while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
  // WIFEXITED / WEXITSTATUS, by hand (macros do not import).
  let exited = status & 0x7f == 0
  return ToolRun(
    status: exited ? (status >> 8) & 0xff : 128 + (status & 0x7f), stdout: readFile(out) ?? "",
    stderr: readFile(err) ?? "")
}

/// The command-line tool as a user runs it: exit statuses, the figures it prints and the
/// files it writes, compared with what the libraries give for the same input.
@Suite struct CLITests {
  static let realTrace = repoRoot + "/Tests/Fixtures/kmem-6.18-swiftc-tar.trace.gz"

  /// `replay --json` on the real trace: the figures the PageAllocTrace article quotes, in
  /// the text report and the JSON file.
  @Test func replayTheRealTrace() throws {
    let json = tempPath("replay.json")
    defer { unlink(json) }
    let r = try runTool(["replay", Self.realTrace, "--json", json])
    #expect(r.status == 0, "stderr: \(r.stderr)")
    #expect(r.stdout.contains("\nlines read:          377476\n"))
    #expect(r.stdout.contains("\nevents applied:      200259 (167330 allocs, 32929 frees)\n"))
    #expect(r.stdout.contains("\npre-trace pages:     100 (first event a free: allocated before the trace)\n"))
    #expect(r.stdout.contains("\ndouble-free:         4 (lines 310610, 310611, 310612, 310613)\n"))
    #expect(
      r.stdout.contains(
        "\nNode 0, zone   Normal   1240    597    396    349    312    279    163     76     39     34    217 \n"))
    let j = try #require(readFile(json))
    #expect(j.contains("\"events_applied\": 200259,"))
    #expect(j.contains("\"pretrace_pages\": 100,"))
    #expect(j.contains("\"double-free\": {\"count\": 4, \"first_lines\": [310610, 310611, 310612, 310613]}"))
    #expect(j.contains("\"buddyinfo\": [[1240, 597, 396, 349, 312, 279, 163, 76, 39, 34, 217]],"))
  }

  /// `replay --predict --json` on this machine's capture: the prediction object with every
  /// decision, and the figures the PageAllocTrace article quotes for it.
  @Test func predictThisMachinesTrace() throws {
    let json = tempPath("predict.json")
    defer { unlink(json) }
    let trace = repoRoot + "/Tests/Fixtures/kmem-6.18-tar-czf.trace.gz"
    let r = try runTool(["replay", trace, "--predict", "--json", json])
    #expect(r.status == 0, "stderr: \(r.stderr)")
    let j = try #require(readFile(json))
    for key in ["pcp_alloc", "refill", "refill_count", "drain", "drain_timing", "buddy_alloc", "misses"] {
      #expect(j.contains("\"\(key)\": "), "no \(key) in the prediction")
    }
    #expect(j.contains("\"pcp_alloc\": {\"predicted\": 31439, \"hits\": 31435}"))
    #expect(j.contains("\"refill_count\": {\"predicted\": 105, \"hits\": 105}"))
  }

  /// `replay --timeline` writes a well-formed SVG with the three panels.
  @Test func replayTimelineWritesAnSVG() throws {
    let svg = tempPath("timeline.svg")
    defer { unlink(svg) }
    let r = try runTool(["replay", repoRoot + "/Tests/Fixtures/kmem-6.18-tar-czf.trace.gz", "--timeline", svg])
    #expect(r.status == 0, "stderr: \(r.stderr)")
    let text = try #require(readFile(svg))
    #expect(text.hasSuffix("</svg>\n") && unbalancedTag(text) == nil)
    #expect(text.contains("free pages in the buddy, by order") && text.contains("unusable free index, order 9"))
  }

  /// `mirror` on this machine's /proc files (the fixtures): every number equal, status 0;
  /// a changed min_free_kbytes makes the watermarks differ, status 1.
  @Test func mirrorThisMachine() throws {
    let base = [
      "mirror", "--zoneinfo", repoRoot + "/Tests/Fixtures/machine-zoneinfo.txt", "--sys-vm",
      repoRoot + "/Tests/Fixtures/machine-sys-vm",
    ]
    let r = try runTool(base)
    #expect(r.status == 0, "stderr: \(r.stderr)")
    #expect(r.stdout.contains("\nall 84 numbers equal\n"))
    let off = try runTool(base + ["--min-free-kbytes", "1024"])
    #expect(off.status == 1)
    let bad = try runTool(["mirror", "--zoneinfo", "/nonexistent/zoneinfo"])
    #expect(bad.status == 2)
  }

  /// `replay --strict` stops at the first anomaly with FILE:LINE: reason and status 1;
  /// without --strict the same trace replays (status 0) and counts it.
  @Test func replayStrictExitsOneOnAnAnomaly() throws {
    let trace = tempPath("double.trace")
    defer { unlink(trace) }
    writeFile(
      trace,
      """
      t-1 [000] . 1.0: mm_page_alloc: page=1 pfn=0x2000 order=0 migratetype=0 gfp_flags=GFP_KERNEL
      t-1 [000] . 1.0: mm_page_free: page=1 pfn=0x2000 order=0
      t-1 [000] . 1.0: mm_page_free: page=1 pfn=0x2000 order=0

      """)
    let strict = try runTool(["replay", trace, "--strict"])
    #expect(strict.status == 1)
    #expect(strict.stderr == "\(trace):3: double-free: pfn 0x2000 order 0: page 0x2000 is already free\n")
    #expect(strict.stdout == "")
    let lax = try runTool(["replay", trace])
    #expect(lax.status == 0)
    #expect(lax.stdout.contains("\ndouble-free:         1 (lines 3)\n"))
    let missing = try runTool(["replay", "/nonexistent/x.trace"])
    #expect(missing.status == 1)
    #expect(missing.stderr == "/nonexistent/x.trace: No such file or directory\n")
  }

  /// `info` prints the four /proc views of the workload's allocator, exactly as the
  /// library prints them for the same workload (one CPU: deterministic).
  @Test(arguments: InfoWorkload.allCases)
  func infoPrintsTheViews(workload: InfoWorkload) throws {
    let r = try runTool(["info", "--workload", workload.rawValue, "--pages", "8192", "--cpus", "1", "--drain"])
    #expect(r.status == 0, "stderr: \(r.stderr)")
    let a = try PageAllocator(configuration: .normal(pages: 8192, cpuCount: 1, backing: .none))
    workload.run(on: a, seed: 42)
    a.drainAllPages()
    let expected =
      "# workload \(workload.rawValue): \(workload.summary)\n# 8192 pages, 1 CPUs, pcp lists drained\n"
      + "# no compaction\n\n"
      + "$ cat /proc/buddyinfo\n\(a.buddyInfo())\n$ cat /proc/pagetypeinfo\n\(a.pageTypeInfo())\n"
      + "$ cat /proc/zoneinfo\n\(a.zoneInfo())\n$ cat /proc/vmstat\n\(a.vmstat())\n"
      + "$ cat /sys/kernel/debug/extfrag/extfrag_index\n\(a.extfragIndex())\n"
      + "$ cat /sys/kernel/debug/extfrag/unusable_index\n\(a.unusableIndex())"
    #expect(r.stdout == expected)
  }

  /// `map --svg` writes the library's fragmentation map of the workload's allocator.
  @Test func mapWritesTheFragmentationMap() throws {
    let svg = tempPath("map.svg")
    defer { unlink(svg) }
    let r = try runTool(["map", "--workload", "fragment", "--pages", "8192", "--cpus", "1", "--svg", svg])
    #expect(r.status == 0, "stderr: \(r.stderr)")
    let a = try PageAllocator(configuration: .normal(pages: 8192, cpuCount: 1, backing: .none))
    InfoWorkload.fragment.run(on: a, seed: 42)
    let m = FragmentationMap(allocator: a)
    #expect(
      r.stdout == "wrote \(svg): 16 pageblocks, unusable free index at order 9: \(m.unusableFreeIndex(order: 9))\n"
        + "no compaction; pgmigrate_success 0, compact_migrate_scanned 0, compact_free_scanned 0\n")
    let text = try #require(readFile(svg))
    #expect(text == m.svg(title: "pagealloc map: workload fragment (\(InfoWorkload.fragment.summary))"))
    #expect(text.hasPrefix("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg ") && text.hasSuffix("</svg>\n"))
    #expect(unbalancedTag(text) == nil)
  }

  /// A bench run whose result check fails (here made to fail on purpose) exits with
  /// status 2 and one line naming the suite; a bad option is a usage error.
  @Test func aBrokenBenchRunExitsTwo() throws {
    let r = try runTool(["bench", "cma", "--iterations", "1", "--sabotage", "leak-page"])
    #expect(r.status == 2)
    #expect(
      r.stderr
        == "pagealloc bench: bench cma: per-page: 65535 pages free after the run, 65536 before: pages lost or freed twice\n"
    )
    let usage = try runTool(["bench", "nosuchsuite"])
    #expect(usage.status == 64)
  }
}

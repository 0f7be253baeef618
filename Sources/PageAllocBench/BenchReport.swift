@_spi(Benchmark) import PageAlloc
import _PageAllocUtilities
import PageAllocVMalloc
import Glibc

/// The machine a benchmark ran on.
public struct MachineInfo: Sendable, Hashable {
  /// `model name` from /proc/cpuinfo.
  public var cpuModel: String
  /// Online CPUs.
  public var cores: Int
  /// The Swift compiler that built this binary, from compile-time `#if compiler(>=...)`
  /// checks (the newest release it is at least).
  public var swiftVersion: String
  /// `uname -sr`.
  public var os: String
  /// `release` or `debug` (debug figures are not comparable).
  public var build: String

  public init(cpuModel: String, cores: Int, swiftVersion: String, os: String, build: String) {
    self.cpuModel = cpuModel
    self.cores = cores
    self.swiftVersion = swiftVersion
    self.os = os
    self.build = build
  }

  /// The machine this process runs on.
  public static func current() -> MachineInfo {
    var model = "unknown"
    if let text = readSmallFile("/proc/cpuinfo") {
      for line in text.split(separator: "\n") where line.hasPrefix("model name") {
        if let colon = line.firstIndex(of: ":") {
          model = line[line.index(after: colon)...].trimmingCharacters()
        }
        break
      }
    }
    var u = utsname()
    uname(&u)
    let sys = withUnsafeBytes(of: &u.sysname) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    let rel = withUnsafeBytes(of: &u.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    #if DEBUG
      let build = "debug"
    #else
      let build = "release"
    #endif
    return MachineInfo(
      cpuModel: model, cores: Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))), swiftVersion: compilerVersion,
      os: "\(sys) \(rel)", build: build)
  }

  static var compilerVersion: String {
    #if compiler(>=6.5)
      return ">=6.5"
    #elseif compiler(>=6.4)
      return "6.4"
    #elseif compiler(>=6.3.1)
      return "6.3.1"
    #elseif compiler(>=6.3)
      return "6.3"
    #elseif compiler(>=6.2)
      return "6.2"
    #elseif compiler(>=6.1)
      return "6.1"
    #else
      return "<6.1"
    #endif
  }

  static func readSmallFile(_ path: String) -> String? {
    guard let f = fopen(path, "r") else { return nil }
    defer { fclose(f) }
    var bytes: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 4096)
    while true {
      let n = fread(&buf, 1, buf.count, f)
      if n <= 0 { break }
      bytes += buf[0..<n]
      if bytes.count > 1 << 20 { break }
    }
    return String(decoding: bytes, as: UTF8.self)
  }
}

extension Substring {
  fileprivate func trimmingCharacters() -> String {
    String(self.drop { $0 == " " || $0 == "\t" }.reversed().drop { $0 == " " || $0 == "\t" }.reversed())
  }
}

/// The results of one `pagealloc bench` run, and their renderings: the table, the JSON
/// document (`--json`) and the order sweep chart (`--svg`).
public struct BenchReport: Sendable {
  public var machine: MachineInfo
  public var results: [BenchResult]
  /// Named ratios, from ``BenchRegistry/ratios(for:)``.
  public var ratios: [(String, Double)]

  public init(machine: MachineInfo, results: [BenchResult], ratios: [(String, Double)]? = nil) {
    self.machine = machine
    self.results = results
    self.ratios = ratios ?? BenchRegistry.ratios(for: results)
  }

  // MARK: Table

  /// A plain-text table of every result, then the ratios.
  public func table() -> String {
    let header = ["suite", "variant", "order", "iterations", "pages/iter", "total ms", "ns/iter", "ns/page", "notes"]
    var rows: [[String]] = []
    for r in results {
      let notes = r.extra.keys.sorted().map { "\($0)=\(formatNumber(r.extra[$0]!))" }.joined(separator: " ")
      rows.append([
        r.suite, r.variant, r.order.map(String.init) ?? "-", String(r.iterations), String(r.pagesPerIteration),
        fixed(Double(r.totalNanoseconds) / 1e6, 2), fixed(r.nsPerIteration, 1), fixed(r.nsPerPage, 2), notes,
      ])
    }
    var widths = header.map(\.count)
    for row in rows { for (i, c) in row.enumerated() { widths[i] = max(widths[i], c.count) } }
    let numeric: Set<Int> = [2, 3, 4, 5, 6, 7]
    func line(_ cells: [String]) -> String {
      cells.enumerated().map { i, c in
        let pad = String(repeating: " ", count: widths[i] - c.count)
        return numeric.contains(i) ? pad + c : c + pad
      }.joined(separator: "  ").trimmingTrailingSpaces()
    }
    var out = line(header) + "\n"
    out += widths.map { String(repeating: "-", count: $0) }.joined(separator: "  ") + "\n"
    for row in rows { out += line(row) + "\n" }
    if !ratios.isEmpty {
      out += "\nratios\n"
      let w = ratios.map(\.0.count).max() ?? 0
      for (k, v) in ratios { out += "  " + k + String(repeating: " ", count: w - k.count) + "  " + fixed(v, 2) + "\n" }
    }
    return out
  }

  /// The machine, one line.
  public var machineLine: String {
    "machine: \(machine.cpuModel), \(machine.cores) cores, \(machine.os), Swift \(machine.swiftVersion), \(machine.build) build"
  }

  // MARK: JSON

  /// The JSON document of `--json`: `machine`, `results[]` (suite, variant, order,
  /// iterations, pages_per_iteration, total_us, ns_per_iteration, ns_per_page, extra) and
  /// `ratios{}`.
  public func json() -> String {
    var s = "{\n  \"machine\": {"
    s += "\"cpu\": \(jsonString(machine.cpuModel)), \"cores\": \(machine.cores), "
    s += "\"swift\": \(jsonString(machine.swiftVersion)), \"os\": \(jsonString(machine.os)), "
    s += "\"build\": \(jsonString(machine.build))},\n  \"results\": ["
    for (i, r) in results.enumerated() {
      s += i == 0 ? "\n" : ",\n"
      s += "    {\"suite\": \(jsonString(r.suite)), \"variant\": \(jsonString(r.variant)), "
      s += "\"order\": \(r.order.map(String.init) ?? "null"), \"iterations\": \(r.iterations), "
      s += "\"pages_per_iteration\": \(r.pagesPerIteration), \"total_us\": \(jsonNumber(r.totalMicroseconds)), "
      s += "\"ns_per_iteration\": \(jsonNumber(r.nsPerIteration)), \"ns_per_page\": \(jsonNumber(r.nsPerPage)), "
      s += "\"extra\": {"
      s += r.extra.keys.sorted().map { "\(jsonString($0)): \(jsonNumber(r.extra[$0]!))" }.joined(separator: ", ")
      s += "}}"
    }
    s += results.isEmpty ? "],\n" : "\n  ],\n"
    s += "  \"ratios\": {"
    s += ratios.map { "\n    \(jsonString($0.0)): \(jsonNumber($0.1))" }.joined(separator: ",")
    s += ratios.isEmpty ? "}\n}\n" : "\n  }\n}\n"
    return s
  }

  // MARK: SVG

  /// An SVG chart of ns per page against order (0...10) for the two free paths of the
  /// high-order suite (log scale), with the speedup at each order; nil when the results
  /// hold no high-order figures.
  public func svg() -> String? {
    let per = results.filter { $0.suite == "high-order" && $0.variant == "per-page" && $0.order != nil }
      .sorted { $0.order! < $1.order! }
    let con = results.filter { $0.suite == "high-order" && $0.variant == "contig" && $0.order != nil }
      .sorted { $0.order! < $1.order! }
    guard !per.isEmpty || !con.isEmpty else { return nil }
    let values = (per + con).map(\.nsPerPage).filter { $0 > 0 }
    let lo = pow(10, floor(log10(values.min() ?? 1)))
    let hi = pow(10, ceil(log10(max(values.max() ?? 10, lo * 10))))
    let w = 760.0, h = 460.0
    let left = 80.0, right = 30.0, top = 60.0, bottom = 70.0
    let pw = w - left - right, ph = h - top - bottom
    func x(_ order: Int) -> Double { left + 14 + (pw - 28) * Double(order) / Double(PageGeometry.maxOrder) }
    func y(_ v: Double) -> Double { top + ph * (1 - (log10(v) - log10(lo)) / (log10(hi) - log10(lo))) }
    func f(_ v: Double) -> String { fixed(v, 1) }
    var s = """
      <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(w))" height="\(Int(h))" viewBox="0 0 \(Int(w)) \(Int(h))" font-family="Helvetica, Arial, sans-serif" font-size="13">
      <rect width="100%" height="100%" fill="white"/>
      <text x="\(f(w / 2))" y="24" text-anchor="middle" font-size="16" font-weight="bold">PageAlloc: ns per page vs order (alloc + split_page + free)</text>
      <text x="\(f(w / 2))" y="44" text-anchor="middle" font-size="11" fill="#555">\(xmlEscape(machineLine))</text>

      """
    // Grid: decades and their 2x and 5x.
    var decade = lo
    while decade <= hi * 1.0001 {
      for m in [1.0, 2.0, 5.0] {
        let v = decade * m
        if v > hi * 1.0001 { break }
        let yy = y(v)
        let major = m == 1
        s +=
          "<line x1=\"\(f(left))\" y1=\"\(f(yy))\" x2=\"\(f(left + pw))\" y2=\"\(f(yy))\" stroke=\"\(major ? "#bbb" : "#e5e5e5")\"/>\n"
        s +=
          "<text x=\"\(f(left - 8))\" y=\"\(f(yy + 4))\" text-anchor=\"end\" fill=\"#333\">\(formatNumber(v))</text>\n"
      }
      decade *= 10
    }
    for o in 0...PageGeometry.maxOrder {
      s += "<line x1=\"\(f(x(o)))\" y1=\"\(f(top))\" x2=\"\(f(x(o)))\" y2=\"\(f(top + ph))\" stroke=\"#f0f0f0\"/>\n"
      s += "<text x=\"\(f(x(o)))\" y=\"\(f(top + ph + 20))\" text-anchor=\"middle\">\(o)</text>\n"
    }
    s +=
      "<rect x=\"\(f(left))\" y=\"\(f(top))\" width=\"\(f(pw))\" height=\"\(f(ph))\" fill=\"none\" stroke=\"#333\"/>\n"
    s +=
      "<text x=\"\(f(left + pw / 2))\" y=\"\(f(h - 22))\" text-anchor=\"middle\">order (block of 2^order pages, split and freed)</text>\n"
    s +=
      "<text transform=\"translate(22 \(f(top + ph / 2))) rotate(-90)\" text-anchor=\"middle\">ns per page (log scale)</text>\n"
    func series(_ rs: [BenchResult], _ color: String, _ dash: String) {
      let pts = rs.map { "\(f(x($0.order!))),\(f(y(max($0.nsPerPage, lo))))" }.joined(separator: " ")
      s +=
        "<polyline points=\"\(pts)\" fill=\"none\" stroke=\"\(color)\" stroke-width=\"2.5\" stroke-dasharray=\"\(dash)\"/>\n"
      for r in rs {
        s +=
          "<circle cx=\"\(f(x(r.order!)))\" cy=\"\(f(y(max(r.nsPerPage, lo))))\" r=\"4\" fill=\"\(color)\"><title>order \(r.order!): \(fixed(r.nsPerPage, 2)) ns/page</title></circle>\n"
      }
    }
    series(per, "#c0392b", "none")
    series(con, "#2471a3", "none")
    // Speedup labels above the per-page points.
    for c in con {
      guard let p = per.first(where: { $0.order == c.order }), let sp = c.extra["speedup"] else { continue }
      let yy = min(y(max(p.nsPerPage, lo)), y(max(c.nsPerPage, lo))) - 10
      s +=
        "<text x=\"\(f(x(c.order!)))\" y=\"\(f(yy))\" text-anchor=\"middle\" font-size=\"11\" fill=\"#555\">\(fixed(sp, 1))x</text>\n"
    }
    // Legend.
    // Bottom left: the one corner no series reaches (the per-page line stays high, the
    // contig line falls towards the right).
    let lx = left + 20, ly = top + ph - 62
    s += "<rect x=\"\(f(lx - 10))\" y=\"\(f(ly - 14))\" width=\"255\" height=\"66\" fill=\"white\" stroke=\"#ccc\"/>\n"
    s +=
      "<line x1=\"\(f(lx))\" y1=\"\(f(ly))\" x2=\"\(f(lx + 24))\" y2=\"\(f(ly))\" stroke=\"#c0392b\" stroke-width=\"2.5\"/>\n"
    s += "<text x=\"\(f(lx + 32))\" y=\"\(f(ly + 4))\">per-page putPage loop (before)</text>\n"
    s +=
      "<line x1=\"\(f(lx))\" y1=\"\(f(ly + 20))\" x2=\"\(f(lx + 24))\" y2=\"\(f(ly + 20))\" stroke=\"#2471a3\" stroke-width=\"2.5\"/>\n"
    s += "<text x=\"\(f(lx + 32))\" y=\"\(f(ly + 24))\">freeContigRange (after)</text>\n"
    s +=
      "<text x=\"\(f(lx + 2))\" y=\"\(f(ly + 44))\" font-size=\"11\" fill=\"#555\">N.Nx above a point: speedup at that order</text>\n"
    s += "</svg>\n"
    return s
  }
}

// MARK: - Formatting (no Foundation in the library)

extension String {
  fileprivate func trimmingTrailingSpaces() -> String {
    var s = self
    while s.last == " " { s.removeLast() }
    return s
  }
}

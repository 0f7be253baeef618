import PageAlloc
import _PageAllocUtilities

/// The model's free memory over trace time, sampled while a replay runs
/// (`pagealloc replay FILE --timeline F.svg`): free pages per order, the unusable free
/// index at pageblock order, the pages on pcp lists, and marks at each
/// `mm_page_alloc_extfrag` event and each anomaly.
public struct ReplayTimeline: Sendable {
  public struct Sample: Sendable, Hashable {
    /// Seconds since the first event (or the event index, when the trace has no times).
    public var x: Double
    /// Free pages in the buddy at each order 0...10 (blocks times 2^order).
    public var freePages: [Int]
    public var pcpPages: Int
    /// The unusable free space index at pageblock order (0...1).
    public var unusableIndex: Double
  }

  public struct Mark: Sendable, Hashable {
    public enum Kind: String, Sendable {
      /// `mm_page_alloc_extfrag`: a fallback to another migratetype's pageblock.
      case extfrag
      /// A replay anomaly (``ReplayAnomaly``).
      case anomaly
    }
    public var x: Double
    public var kind: Kind
    public var line: Int
    public var label: String
  }

  public var samples: [Sample]
  public var marks: [Mark]
  /// Whether x is seconds (else event indices).
  public var timed: Bool
  /// The trace time of x = 0, in seconds.
  public var start: Double

  /// Colours of orders 0...10, light (small blocks) to dark (large ones).
  static let orderColours = [
    "#fde725", "#bddf26", "#7ad151", "#44bf70", "#22a884", "#21918c", "#2a788e", "#355f8d", "#414487", "#482475",
    "#440154",
  ]

  /// A step of 1, 2 or 5 times a power of ten that cuts `range` into about `count` parts.
  static func niceStep(_ range: Double, _ count: Int) -> Double {
    guard range > 0 else { return 1 }
    let raw = range / Double(max(count, 1))
    var p = 1.0
    while p * 10 <= raw { p *= 10 }
    while p > raw { p /= 10 }
    for m in [1.0, 2.0, 5.0, 10.0] where p * m >= raw { return p * m }
    return p * 10
  }

  static func label(_ v: Double) -> String {
    if v >= 10_000 && (v / 1000) == (v / 1000).rounded() { return String(Int(v / 1000)) + "k" }
    if v == v.rounded() && abs(v) < 1e15 { return String(Int(v)) }
    return fixed(v, abs(v) < 1 ? 2 : 1)
  }

  /// The picture as SVG.
  public func svg(title: String) -> String {
    let width = 1100
    let left = 86
    let plotW = 820
    let top = 74
    let freeH = 300
    let gap = 34
    let pcpH = 110
    let idxH = 110
    let pcpTop = top + freeH + gap
    let idxTop = pcpTop + pcpH + gap
    let bottom = idxTop + idxH
    let height = bottom + 52
    let xMax = max(samples.last?.x ?? 1, 1e-9)
    func X(_ x: Double) -> Double { Double(left) + x / xMax * Double(plotW) }
    func f(_ v: Double) -> String { fixed(v, 1) }
    var s = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
    s +=
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(width)\" height=\"\(height)\" viewBox=\"0 0 \(width) \(height)\" font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\">\n"
    s += "<rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>\n"
    s += "<text x=\"\(left)\" y=\"24\" font-size=\"15\" font-weight=\"bold\">\(xmlEscape(title))</text>\n"
    let extfrag = marks.filter { $0.kind == .extfrag }.count
    let anomalies = marks.filter { $0.kind == .anomaly }.count
    let span =
      timed ? "\(fixed(xMax, 3)) s of trace from t = \(fixed(start, 6)) s" : "\(Int(xMax)) events (no timestamps)"
    s +=
      "<text x=\"\(left)\" y=\"44\" font-size=\"11\">\(xmlEscape(span)); \(samples.count) samples; \(extfrag) extfrag events, \(anomalies) anomalies</text>\n"

    // Panel 1: free pages per order, stacked (order 10 at the bottom).
    let totals = samples.map { $0.freePages.reduce(0, +) }
    let maxFree = Double(max(totals.max() ?? 1, 1))
    let freeStep = ReplayTimeline.niceStep(maxFree, 5)
    let freeTop = (maxFree / freeStep).rounded(.up) * freeStep
    func YF(_ v: Double) -> Double { Double(top + freeH) - v / freeTop * Double(freeH) }
    s += panelFrame(left, top, plotW, freeH)
    var lower = [Double](repeating: 0, count: samples.count)
    for o in stride(from: PageGeometry.maxOrder, through: 0, by: -1) {
      let upper = samples.indices.map { lower[$0] + Double(samples[$0].freePages[o]) }
      if upper == lower { continue }
      var pts: [String] = []
      for i in samples.indices { pts.append("\(f(X(samples[i].x))),\(f(YF(upper[i])))") }
      for i in samples.indices.reversed() { pts.append("\(f(X(samples[i].x))),\(f(YF(lower[i])))") }
      s +=
        "<polygon points=\"\(pts.joined(separator: " "))\" fill=\"\(ReplayTimeline.orderColours[o])\" stroke=\"none\"><title>order \(o)</title></polygon>\n"
      lower = upper
    }
    s += yAxis(left, top, freeH, freeTop, freeStep, "free pages in the buddy, by order")

    // Marks: a thin line through every panel, and a triangle over the first.
    for m in marks {
      let x = f(X(m.x))
      let colour = m.kind == .extfrag ? "#e65100" : "#c62828"
      s +=
        "<line x1=\"\(x)\" y1=\"\(top)\" x2=\"\(x)\" y2=\"\(bottom)\" stroke=\"\(colour)\" stroke-width=\"0.8\" stroke-opacity=\"0.55\"/>\n"
      s +=
        "<path d=\"M\(x),\(top - 1) l-4,-8 h8 z\" fill=\"\(colour)\"><title>line \(m.line): \(xmlEscape(m.label))</title></path>\n"
    }

    // Panel 2: pcp pages.
    let maxPcp = Double(max(samples.map(\.pcpPages).max() ?? 1, 1))
    let pcpStep = ReplayTimeline.niceStep(maxPcp, 3)
    let pcpTopV = (maxPcp / pcpStep).rounded(.up) * pcpStep
    func YP(_ v: Double) -> Double { Double(pcpTop + pcpH) - v / pcpTopV * Double(pcpH) }
    s += panelFrame(left, pcpTop, plotW, pcpH)
    if !samples.isEmpty {
      var pts = samples.map { "\(f(X($0.x))),\(f(YP(Double($0.pcpPages))))" }
      pts.append("\(f(X(samples.last!.x))),\(f(YP(0)))")
      pts.append("\(f(X(samples.first!.x))),\(f(YP(0)))")
      s +=
        "<polygon points=\"\(pts.joined(separator: " "))\" fill=\"#90caf9\" stroke=\"#1565c0\" stroke-width=\"1\"/>\n"
    }
    s += yAxis(left, pcpTop, pcpH, pcpTopV, pcpStep, "pages on the model's pcp lists (all CPUs)")

    // Panel 3: unusable free index at pageblock order.
    func YI(_ v: Double) -> Double { Double(idxTop + idxH) - v * Double(idxH) }
    s += panelFrame(left, idxTop, plotW, idxH)
    if !samples.isEmpty {
      let pts = samples.map { "\(f(X($0.x))),\(f(YI($0.unusableIndex)))" }
      s +=
        "<polyline points=\"\(pts.joined(separator: " "))\" fill=\"none\" stroke=\"#6a1b9a\" stroke-width=\"1.5\"/>\n"
    }
    s += yAxis(left, idxTop, idxH, 1, 0.25, "unusable free index, order \(PageGeometry.pageblockOrder)")

    // The time axis under the last panel.
    let xStep = ReplayTimeline.niceStep(xMax, 8)
    var t = 0.0
    while t <= xMax + xStep * 1e-9 {
      let x = f(X(t))
      s += "<line x1=\"\(x)\" y1=\"\(bottom)\" x2=\"\(x)\" y2=\"\(bottom + 5)\" stroke=\"#333\"/>\n"
      s +=
        "<text x=\"\(x)\" y=\"\(bottom + 18)\" font-size=\"10\" text-anchor=\"middle\">\(ReplayTimeline.label(t))</text>\n"
      t += xStep
    }
    s +=
      "<text x=\"\(left + plotW / 2)\" y=\"\(bottom + 40)\" font-size=\"11\" text-anchor=\"middle\">\(timed ? "seconds since the first event" : "event")</text>\n"

    // Legend.
    let lx = left + plotW + 22
    s += "<text x=\"\(lx)\" y=\"\(top + 8)\" font-size=\"11\" font-weight=\"bold\">order</text>\n"
    for o in 0...PageGeometry.maxOrder {
      let y = top + 18 + o * 17
      s +=
        "<rect x=\"\(lx)\" y=\"\(y)\" width=\"14\" height=\"12\" fill=\"\(ReplayTimeline.orderColours[o])\"/><text x=\"\(lx + 20)\" y=\"\(y + 10)\" font-size=\"10\">\(o) (\(1 << o) page\(o == 0 ? "" : "s"))</text>\n"
    }
    let my = top + 18 + 11 * 17 + 14
    s +=
      "<path d=\"M\(lx + 7),\(my + 10) l-5,-9 h10 z\" fill=\"#e65100\"/><text x=\"\(lx + 20)\" y=\"\(my + 10)\" font-size=\"10\">extfrag (\(extfrag))</text>\n"
    s +=
      "<path d=\"M\(lx + 7),\(my + 27) l-5,-9 h10 z\" fill=\"#c62828\"/><text x=\"\(lx + 20)\" y=\"\(my + 27)\" font-size=\"10\">anomaly (\(anomalies))</text>\n"
    s += "</svg>\n"
    return s
  }

  func panelFrame(_ x: Int, _ y: Int, _ w: Int, _ h: Int) -> String {
    "<rect x=\"\(x)\" y=\"\(y)\" width=\"\(w)\" height=\"\(h)\" fill=\"#fafafa\" stroke=\"#999\" stroke-width=\"0.8\"/>\n"
  }

  /// Ticks and grid lines of a panel's y axis from 0 to `maxV`, and its title above it.
  func yAxis(_ left: Int, _ top: Int, _ h: Int, _ maxV: Double, _ step: Double, _ title: String) -> String {
    var s = ""
    var v = 0.0
    while v <= maxV + step * 1e-9 {
      let y = fixed(Double(top + h) - v / maxV * Double(h), 1)
      s +=
        "<line x1=\"\(left - 4)\" y1=\"\(y)\" x2=\"\(left + 820)\" y2=\"\(y)\" stroke=\"#000\" stroke-opacity=\"0.12\"/>\n"
      s +=
        "<text x=\"\(left - 7)\" y=\"\(y)\" dy=\"3.5\" font-size=\"10\" text-anchor=\"end\">\(ReplayTimeline.label(v))</text>\n"
      v += step
    }
    s += "<text x=\"\(left)\" y=\"\(top - 6)\" font-size=\"11\" font-weight=\"bold\">\(xmlEscape(title))</text>\n"
    return s
  }
}

/// Takes the timeline's samples as a replay goes: one each time an event's timestamp
/// crosses the next of `bins` equal steps of the trace's time span (or of its events,
/// when it has no timestamps), before the event is applied, and one at the end.
final class TimelineSampler {
  let allocator: PageAllocator
  let times: ContiguousArray<UInt64>
  let t0: UInt64
  let t1: UInt64
  let timed: Bool
  let count: Int
  let bins: Int
  var next = 0
  var samples: [ReplayTimeline.Sample] = []
  var marks: [ReplayTimeline.Mark] = []

  init(allocator: PageAllocator, parsed: ParsedTrace, bins: Int = 600) {
    self.allocator = allocator
    times = parsed.times
    count = parsed.events.count
    self.bins = bins
    let stamps = parsed.times.filter { $0 > 0 }
    t0 = stamps.min() ?? 0
    t1 = stamps.max() ?? 0
    timed = t1 > t0
    for (i, e) in parsed.events.enumerated() where e.kind == .extfrag {
      marks.append(
        ReplayTimeline.Mark(
          x: x(of: i), kind: .extfrag, line: Int(e.line),
          label:
            "extfrag: order \(e.order) type \(e.migrateType) fell back to an order-\(e.fallbackOrder) block of type \(e.fallbackType)\(e.changeOwnership ? ", pageblock claimed" : "")"
        ))
    }
  }

  func x(of index: Int) -> Double {
    if timed {
      let t = index < times.count ? times[index] : t1
      return Double(max(t, t0) - t0) / 1e9
    }
    return Double(index)
  }

  /// The position of bin `b`'s start.
  func boundary(_ b: Int) -> Double {
    let span = timed ? Double(t1 - t0) / 1e9 : Double(max(count, 1))
    return span * Double(b) / Double(bins)
  }

  @inline(__always)
  func observe(_ index: Int) {
    if next <= bins && x(of: index) >= boundary(next) { take(index) }
  }

  @inline(never)
  func take(_ index: Int) {
    let here = x(of: index)
    while next <= bins && here >= boundary(next) { next += 1 }
    sample(at: here)
  }

  func sample(at x: Double) {
    let blocks = allocator.freeBlockCounts()
    samples.append(
      ReplayTimeline.Sample(
        x: x, freePages: blocks.enumerated().map { $0.element << $0.offset }, pcpPages: allocator.pcpPageCount,
        unusableIndex: Double(PageAllocator.unusableFreeIndex(freeBlocks: blocks, order: PageGeometry.pageblockOrder))
          / 1000))
  }

  func anomaly(_ kind: ReplayAnomaly, line: Int, index: Int, reason: String) {
    marks.append(ReplayTimeline.Mark(x: x(of: index), kind: .anomaly, line: line, label: "\(kind.rawValue): \(reason)"))
  }

  func finish() -> ReplayTimeline {
    sample(at: timed ? Double(t1 - t0) / 1e9 : Double(count))
    return ReplayTimeline(
      samples: samples, marks: marks.sorted { $0.x < $1.x }, timed: timed, start: Double(t0) / 1e9)
  }
}

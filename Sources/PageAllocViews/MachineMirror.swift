// `pagealloc mirror`: a model built with a real machine's zones and sysctls, and its
// numbers side by side with the kernel's.

import PageAlloc
import _PageAllocUtilities

/// A machine's zones and sysctls mirrored into a model, and the numbers the kernel derives
/// from them compared with the model's: for each zone the min, low, high and promo
/// watermarks and the protection row, and for each populated zone the pagesets' batch,
/// high_min and high_max and the vm stats threshold; then min_free_kbytes as khugepaged
/// recomputes it, when the THP mode is known.
///
/// The model is given what the kernel cannot derive: each zone's start pfn and its
/// spanned, present and managed counts (the firmware memory map, memblock reservations,
/// and how far deferred struct page initialisation has got), the sysctls, and the CPU
/// count. Present pages that are not managed become reserved pages at the end of the zone,
/// spanned pages that are not present unavailable ones after them (where they really lie
/// changes none of the numbers compared). Each CPU's `count` and `high` are live state:
/// they are shown, not compared.
public struct MachineMirror: Sendable {
  /// What the mirror is built from.
  public struct Inputs: Sendable {
    public var zoneinfo: ZoneInfoText
    /// `/proc/sys/vm/min_free_kbytes`.
    public var minFreeKbytes: Int
    /// `/proc/sys/vm/watermark_scale_factor`.
    public var watermarkScaleFactor: Int
    /// `/proc/sys/vm/lowmem_reserve_ratio`, one entry per zone kind.
    public var lowmemReserveRatio: [Int]
    /// `/proc/sys/vm/percpu_pagelist_high_fraction`.
    public var percpuPagelistHighFraction: Int
    /// Online CPUs; nil takes the number of pagesets zoneinfo prints per populated zone.
    public var cpus: Int?
    /// Whether transparent huge pages are enabled (`always` or `madvise`); nil when unknown
    /// (then min_free_kbytes is not compared).
    public var transparentHugePages: Bool?

    public init(
      zoneinfo: ZoneInfoText, minFreeKbytes: Int, watermarkScaleFactor: Int = 10,
      lowmemReserveRatio: [Int] = ZoneKind.defaultLowmemReserveRatio, percpuPagelistHighFraction: Int = 0,
      cpus: Int? = nil, transparentHugePages: Bool? = nil
    ) {
      self.zoneinfo = zoneinfo
      self.minFreeKbytes = minFreeKbytes
      self.watermarkScaleFactor = watermarkScaleFactor
      self.lowmemReserveRatio = lowmemReserveRatio
      self.percpuPagelistHighFraction = percpuPagelistHighFraction
      self.cpus = cpus
      self.transparentHugePages = transparentHugePages
    }
  }

  /// One compared number.
  public struct Row: Sendable, Hashable {
    /// "DMA32", or "" for a machine-wide number.
    public var zone: String
    /// "min", "protection[2]", "cpu0 batch", "min_free_kbytes"...
    public var field: String
    public var kernel: Int
    public var model: Int
    public var equal: Bool { kernel == model }
  }

  /// Why a mirror cannot be built.
  public struct MirrorError: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String
    public var description: String { message }
  }

  public let inputs: Inputs
  public let cpus: Int
  /// The model.
  public let allocator: PageAllocator
  public let rows: [Row]
  /// Per zone name, each CPU's live `count` and `high` as the kernel printed them.
  public let liveState: [(zone: String, pagesets: [ZoneInfoText.PageSet])]

  /// Whether every compared number is equal.
  public var allEqual: Bool { rows.allSatisfy(\.equal) }

  /// `pagealloc mirror`'s exit status: 0 when every compared number is equal, 1 when some
  /// differ. (It exits with 2 when no mirror could be built.)
  public var exitStatus: Int32 { allEqual ? 0 : 1 }

  /// The configuration of a model with the machine's zones (node 0) and sysctls.
  public static func configuration(_ inputs: Inputs, cpus: Int) throws(MirrorError) -> PageAllocator.Configuration {
    var zones: [ZoneConfiguration] = []
    for z in inputs.zoneinfo.zones {
      guard z.node == 0 else {
        throw MirrorError(message: "node \(z.node): the model has one node (mirror a single-node machine)")
      }
      guard let kind = z.kind else { throw MirrorError(message: "zone \(z.name): not a zone kind of x86-64") }
      guard z.present <= z.spanned, z.managed <= z.present, z.managed >= 0 else {
        throw MirrorError(message: "zone \(z.name): managed \(z.managed) > present \(z.present) or present > spanned")
      }
      if !z.populated || z.spanned == 0 || kind == .device {
        zones.append(.empty(kind))
        continue
      }
      let start = z.startPFN!
      let managedEnd = start + z.managed
      let presentEnd = start + z.present
      let end = start + z.spanned
      zones.append(
        ZoneConfiguration(
          kind: kind, pfns: PFN(start)..<PFN(end),
          unavailable: presentEnd < end ? [PFN(presentEnd)..<PFN(end)] : [],
          reserved: managedEnd < presentEnd ? [PFN(managedEnd)..<PFN(presentEnd)] : []))
    }
    var c = PageAllocator.Configuration(zones: zones, cpuCount: cpus, backing: .none)
    c.minFreeKbytes = inputs.minFreeKbytes
    c.watermarkScaleFactor = inputs.watermarkScaleFactor
    c.lowmemReserveRatio = inputs.lowmemReserveRatio
    c.percpuPagelistHighFraction = inputs.percpuPagelistHighFraction
    return c
  }

  /// Builds the model and compares.
  public init(_ inputs: Inputs) throws(MirrorError) {
    self.inputs = inputs
    let printedCPUs = inputs.zoneinfo.zones.first { $0.populated }?.pagesets.count ?? 0
    let cpus = inputs.cpus ?? printedCPUs
    guard cpus >= 1 else { throw MirrorError(message: "no CPU count: zoneinfo prints no pagesets; give --cpus") }
    self.cpus = cpus
    let config = try MachineMirror.configuration(inputs, cpus: cpus)
    do {
      allocator = try PageAllocator(configuration: config)
    } catch {
      throw MirrorError(message: "the model refused the configuration: \(error)")
    }
    let model = allocator.nodeZoneStatistics()
    var rows: [Row] = []
    var live: [(String, [ZoneInfoText.PageSet])] = []
    for z in inputs.zoneinfo.zones {
      guard let kind = z.kind else { continue }
      let m = model[kind.rawValue]
      func add(_ field: String, _ kernel: Int, _ value: Int) {
        rows.append(Row(zone: z.name, field: field, kernel: kernel, model: value))
      }
      // The counts the model was given: equal by construction, a check on the set-up.
      add("spanned", z.spanned, m.spanned)
      add("present", z.present, m.present)
      add("managed", z.managed, m.managed)
      // zoneinfo prints watermarks with the boost added: compare without it.
      add("min", z.min - z.boost, m.watermarkMin)
      add("low", z.low - z.boost, m.watermarkLow)
      add("high", z.high - z.boost, m.watermarkHigh)
      add("promo", z.promo - z.boost, m.watermarkPromo)
      for (i, r) in z.protection.enumerated() {
        add("protection[\(i)]", r, i < m.lowmemReserve.count ? m.lowmemReserve[i] : -1)
      }
      if z.protection.count != m.lowmemReserve.count {
        add("protection entries", z.protection.count, m.lowmemReserve.count)
      }
      guard z.populated else { continue }
      let threshold = PageAllocator.statThreshold(managed: m.managed, cpus: cpus)
      for p in z.pagesets {
        add("cpu\(p.cpu) batch", p.batch, m.batch)
        add("cpu\(p.cpu) high_min", p.highMin, m.highMin)
        add("cpu\(p.cpu) high_max", p.highMax, m.highMax)
        if let t = p.statThreshold { add("cpu\(p.cpu) vm stats threshold", t, threshold) }
      }
      live.append((z.name, z.pagesets))
    }
    if let thp = inputs.transparentHugePages {
      rows.append(
        Row(
          zone: "", field: "min_free_kbytes", kernel: inputs.minFreeKbytes,
          model: allocator.recommendedMinFreeKbytes(transparentHugePages: thp)))
    }
    self.rows = rows
    self.liveState = live
  }

  /// The report: the inputs, then zone by zone each compared number, kernel and model
  /// side by side, a mismatch marked `MISMATCH`; each CPU's live count and high; a last
  /// line with the verdict.
  public var text: String {
    var out = "pagealloc mirror: \(inputs.zoneinfo.zones.count) zones, \(cpus) CPUs, "
    out += "min_free_kbytes \(inputs.minFreeKbytes), watermark_scale_factor \(inputs.watermarkScaleFactor), "
    out += "lowmem_reserve_ratio \(inputs.lowmemReserveRatio.map(String.init).joined(separator: " ")), "
    out += "percpu_pagelist_high_fraction \(inputs.percpuPagelistHighFraction)"
    if let thp = inputs.transparentHugePages { out += ", THP \(thp ? "enabled" : "never")" }
    out += "\n"
    var zone: String?
    for r in rows {
      if r.zone != zone {
        zone = r.zone
        out += "\n" + (r.zone.isEmpty ? "machine" : "zone \(r.zone)") + "\n"
        out += "  " + padRight("", 28) + pad("kernel", 10) + pad("model", 10) + "\n"
      }
      out += "  " + padRight(r.field, 28) + pad(String(r.kernel), 10) + pad(String(r.model), 10)
      out += r.equal ? "\n" : "  MISMATCH\n"
    }
    out += "\nlive pageset state (shown, not compared)\n"
    for (name, sets) in liveState {
      let m = allocator.nodeZoneStatistics().first { $0.kind.description == name }
      for p in sets {
        let note: String
        if p.high == 0 {
          note = "untouched since boot"
        } else if p.high == m?.highMin {
          note = "= high_min"
        } else {
          note = "tuned"
        }
        out += "  " + padRight("\(name) cpu\(p.cpu)", 16) + "count " + pad(String(p.count), 7) + "  high "
        out += pad(String(p.high), 7) + "  (\(note))\n"
      }
    }
    let bad = rows.filter { !$0.equal }.count
    out += "\n"
    out += bad == 0 ? "all \(rows.count) numbers equal\n" : "\(bad) of \(rows.count) numbers differ\n"
    return out
  }

  /// The report as JSON: `{"cpus": N, "inputs": {...}, "rows": [{"zone", "field", "kernel",
  /// "model", "equal"}], "live": [...], "all_equal": bool}`.
  public var json: String {
    var out = "{\n"
    out += "  \"cpus\": \(cpus),\n"
    out += "  \"inputs\": {\"min_free_kbytes\": \(inputs.minFreeKbytes), "
    out += "\"watermark_scale_factor\": \(inputs.watermarkScaleFactor), "
    out += "\"lowmem_reserve_ratio\": [\(inputs.lowmemReserveRatio.map(String.init).joined(separator: ", "))], "
    out += "\"percpu_pagelist_high_fraction\": \(inputs.percpuPagelistHighFraction), "
    out += "\"transparent_hugepages\": \(inputs.transparentHugePages.map { $0 ? "true" : "false" } ?? "null")},\n"
    out += "  \"rows\": [\n"
    out += rows.map {
      "    {\"zone\": \(jsonString($0.zone)), \"field\": \(jsonString($0.field)), \"kernel\": \($0.kernel), \"model\": \($0.model), \"equal\": \($0.equal)}"
    }.joined(separator: ",\n")
    out += "\n  ],\n  \"live\": [\n"
    var live: [String] = []
    for (name, sets) in liveState {
      for p in sets {
        live.append(
          "    {\"zone\": \(jsonString(name)), \"cpu\": \(p.cpu), \"count\": \(p.count), \"high\": \(p.high)}")
      }
    }
    out += live.joined(separator: ",\n")
    out += "\n  ],\n  \"all_equal\": \(allEqual)\n}\n"
    return out
  }
}

extension MachineMirror {
  /// The inputs of this machine (or of a copy of its files): zoneinfo from `zoneinfoPath`,
  /// the sysctls from the directory `sysVM` (`/proc/sys/vm` or a copy), the THP mode from
  /// `thpEnabledPath` when it can be read. Values given as arguments win over the files.
  public static func readInputs(
    zoneinfoPath: String = "/proc/zoneinfo", sysVM: String = "/proc/sys/vm",
    thpEnabledPath: String? = "/sys/kernel/mm/transparent_hugepage/enabled", minFreeKbytes: Int? = nil,
    watermarkScaleFactor: Int? = nil, lowmemReserveRatio: [Int]? = nil, percpuPagelistHighFraction: Int? = nil,
    cpus: Int? = nil, transparentHugePages: Bool? = nil
  ) throws(MirrorError) -> Inputs {
    func read(_ path: String) throws(MirrorError) -> String {
      do {
        return try readTextFile(path)
      } catch {
        throw MirrorError(message: "\(error)")
      }
    }
    func sysctl(_ name: String) throws(MirrorError) -> [Int] {
      let path = sysVM + "/" + name
      let text = try read(path)
      let values = text.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }).map { Int($0) }
      guard !values.isEmpty, values.allSatisfy({ $0 != nil }) else {
        throw MirrorError(message: "\(path): expected numbers, read '\(text.prefix(40))'")
      }
      return values.map { $0! }
    }
    let text = try read(zoneinfoPath)
    let zoneinfo: ZoneInfoText
    do {
      zoneinfo = try ZoneInfoText(parsing: text)
    } catch {
      throw MirrorError(message: "\(zoneinfoPath): \(error)")
    }
    var thp = transparentHugePages
    if thp == nil, let path = thpEnabledPath, let mode = try? readTextFile(path) {
      // "always [madvise] never": the bracketed word is the mode; only `never` disables it.
      if let open = mode.firstIndex(of: "["), let close = mode[open...].firstIndex(of: "]") {
        thp = mode[mode.index(after: open)..<close] != "never"
      }
    }
    func value(_ given: Int?, _ name: String) throws(MirrorError) -> Int {
      if let given { return given }
      return try sysctl(name)[0]
    }
    var ratio = lowmemReserveRatio ?? []
    if lowmemReserveRatio == nil { ratio = try sysctl("lowmem_reserve_ratio") }
    return Inputs(
      zoneinfo: zoneinfo, minFreeKbytes: try value(minFreeKbytes, "min_free_kbytes"),
      watermarkScaleFactor: try value(watermarkScaleFactor, "watermark_scale_factor"), lowmemReserveRatio: ratio,
      percpuPagelistHighFraction: try value(percpuPagelistHighFraction, "percpu_pagelist_high_fraction"), cpus: cpus,
      transparentHugePages: thp)
  }
}

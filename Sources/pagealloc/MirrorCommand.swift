import ArgumentParser
import PageAlloc
import PageAllocViews
import _PageAllocUtilities

/// `pagealloc mirror`: this machine's zones in the model, numbers side by side (see the
/// PageAllocViews article "Mirroring a machine").
struct Mirror: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Build a model with this machine's zones and sysctls and compare its numbers with the kernel's.",
    discussion: """
      Reads /proc/zoneinfo (or --zoneinfo FILE) and min_free_kbytes, watermark_scale_factor,
      lowmem_reserve_ratio and percpu_pagelist_high_fraction from /proc/sys/vm (or --sys-vm
      DIR, or the flags), builds a model with the same zones (start_pfn, spanned, present,
      managed) and prints, zone by zone, the kernel's and the model's watermarks,
      protection, pageset batch, high_min, high_max and vm stats threshold, and
      min_free_kbytes as khugepaged recomputes it when the THP mode is known.
      Exit status: 0 when every compared number is equal, 1 when some differ, 2 when the
      inputs cannot be read or parsed.
      """)

  @Option(help: "The zoneinfo text to mirror.") var zoneinfo = "/proc/zoneinfo"
  @Option(help: "The directory holding the vm sysctls.") var sysVm = "/proc/sys/vm"
  @Option(help: "min_free_kbytes (default: read from the sysctl directory).") var minFreeKbytes: Int?
  @Option(help: "watermark_scale_factor (default: read).") var watermarkScaleFactor: Int?
  @Option(help: "lowmem_reserve_ratio, as the sysctl prints it: \"256 256 32 0 0\" (default: read).")
  var lowmemReserveRatio: String?
  @Option(help: "percpu_pagelist_high_fraction (default: read).") var percpuPagelistHighFraction: Int?
  @Option(help: "Online CPUs (default: the pagesets zoneinfo prints for a zone).") var cpus: Int?
  @Option(help: "The THP mode, always|madvise|never (default: read from /sys/kernel/mm/transparent_hugepage).")
  var thp: String?
  @Option(help: "Write the comparison as JSON to this file.") var json: String?

  func run() throws {
    var ratio: [Int]?
    if let lowmemReserveRatio {
      let parts = lowmemReserveRatio.split(whereSeparator: { $0 == " " || $0 == "," }).map { Int($0) }
      guard !parts.isEmpty, parts.allSatisfy({ $0 != nil }) else {
        printError("pagealloc mirror: --lowmem-reserve-ratio '\(lowmemReserveRatio)': expected numbers")
        throw ExitCode(2)
      }
      ratio = parts.map { $0! }
    }
    var thpEnabled: Bool?
    if let thp {
      guard ["always", "madvise", "never"].contains(thp) else {
        printError("pagealloc mirror: --thp '\(thp)': expected always, madvise or never")
        throw ExitCode(2)
      }
      thpEnabled = thp != "never"
    }
    if let cpus, !(1...1024).contains(cpus) {
      printError("pagealloc mirror: --cpus \(cpus): expected 1...1024")
      throw ExitCode(2)
    }
    let mirror: MachineMirror
    do {
      let inputs = try MachineMirror.readInputs(
        zoneinfoPath: zoneinfo, sysVM: sysVm,
        thpEnabledPath: thp == nil && zoneinfo == "/proc/zoneinfo"
          ? "/sys/kernel/mm/transparent_hugepage/enabled" : nil,
        minFreeKbytes: minFreeKbytes, watermarkScaleFactor: watermarkScaleFactor, lowmemReserveRatio: ratio,
        percpuPagelistHighFraction: percpuPagelistHighFraction, cpus: cpus, transparentHugePages: thpEnabled)
      mirror = try MachineMirror(inputs)
    } catch {
      printError("pagealloc mirror: \(error)")
      throw ExitCode(2)
    }
    print(mirror.text, terminator: "")
    if let json { try writeText(mirror.json, to: json) }
    if mirror.exitStatus != 0 { throw ExitCode(mirror.exitStatus) }
  }
}

import PageAlloc
import _PageAllocUtilities

/// What `pagealloc stress` runs.
public struct StressConfiguration: Sendable {
  /// Worker threads. Worker `i` uses per-CPU page set `i % cpuCount` (pinned through the
  /// CPU override, so a single-thread run does not depend on the scheduler).
  public var threads: Int
  /// Stop after this many seconds (nil: no time limit).
  public var seconds: Double?
  /// Stop after this many operations in total, split over the workers (nil: no limit).
  /// At least one of `seconds` and `operations` must be set.
  public var operations: Int?
  public var seed: UInt64
  /// Fraction (0...1) of operations that are deliberate bad frees (double frees, wrong
  /// orders, foreign pfns, compound heads), each run while the other workers are paused
  /// so that it can never hit another worker's page.
  public var badFreeRate: Double
  /// Injected allocation failures (fail_page_alloc), percent of allocations (0: off).
  public var faultPercent: Int
  /// Worker 0 runs `PageAllocator.verify()` (with every worker paused) every this many
  /// of its operations; 0: only at the end.
  public var verifyEvery: Int
  /// Pages of memory: a 4096-page DMA zone, the rest Normal, with a one-section hole in the
  /// middle (sections of 4096 pages).
  public var pages: Int
  /// The memory behind the pages; nil: `.none` unless an extension needs more (vmalloc
  /// needs `.memfd`, reserved with `MAP_NORESERVE`: only the pages it touches cost memory).
  public var backing: Backing?
  /// Workloads from other modules (the vmalloc hook).
  public var extensions: [any StressExtension]
  /// Runs with page_owner on: the summary then has the page_owner_sort summary of the
  /// pages held when the workers stopped, and the leak report after they gave everything
  /// back.
  public var pageOwner: Bool = false

  public init(
    threads: Int = 1, seconds: Double? = nil, operations: Int? = nil, seed: UInt64 = 1,
    badFreeRate: Double = 0, faultPercent: Int = 1, verifyEvery: Int = 100_000, pages: Int = 1 << 16,
    extensions: [any StressExtension] = [], backing: Backing? = nil
  ) {
    self.threads = threads
    self.seconds = seconds
    self.operations = operations
    self.seed = seed
    self.badFreeRate = badFreeRate
    self.faultPercent = faultPercent
    self.verifyEvery = verifyEvery
    self.pages = pages
    self.extensions = extensions
    self.backing = backing
  }

  /// The allocator configuration the engine builds: with every page of a block checked on
  /// free and allocation (`checkPages`), as the kernel's debug configurations do.
  public var allocatorConfiguration: PageAllocator.Configuration {
    let hole = (pages / 2) & ~4095
    return PageAllocator.Configuration(
      zones: [
        ZoneConfiguration(kind: .dma, pfns: PFN(0)..<PFN(4096)),
        ZoneConfiguration(kind: .normal, pfns: PFN(4096)..<PFN(pages)),
      ], cpuCount: max(threads, 2),
      backing: backing ?? extensions.lazy.compactMap(\.requiredBacking).first ?? .none, sectionPages: 4096,
      holes: pages >= 16384 ? [PFN(hole)..<PFN(hole + 4096)] : [], pageOwner: pageOwner, checkPages: true)
  }
}

/// The result of a stress run.
public struct StressSummary: Sendable, CustomStringConvertible {
  public var threads: Int
  public var seed: UInt64
  /// Operations done (each API call sequence the engine picks counts once).
  public var operations: Int
  public var operationsByKind: [String: Int]
  public var elapsedNanoseconds: UInt64
  /// Allocations that returned nil (injected failures included).
  public var allocationFailures: Int
  /// Failures injected by fault injection.
  public var failuresInjected: Int
  /// `allocContigRange` calls that threw busy (a page in the range that cannot move).
  public var contigBusy: Int
  public var verifications: Int
  /// Deliberate bad frees performed, and how many of them produced a report.
  public var badFreesInjected: Int
  public var badFreesCaught: Int
  /// Reports produced by the deliberate bad frees (one per bad free when all is well).
  public var badFreeReports: Int
  public var badFreesByKind: [String: Int]
  /// `PageAllocator.badPageCount` at the end.
  public var badPages: Int
  /// Reports not explained by a deliberate bad free (0 for a sound allocator).
  public var unexpectedBadPages: Int
  public var quarantinedPages: Int
  /// Managed pages neither free nor quarantined after every worker freed what it held.
  public var pagesLeaked: Int
  /// A hash of the free state (buddy and pcp blocks) before the final cleanup.
  public var stateChecksum: UInt64
  /// The first verification failure, if any.
  public var verifyError: String?
  /// What each extension reported (its failures fail the run).
  public var extensionReports: [StressExtensionReport] = []
  /// Movable blocks whose byte pattern was checked when freed, and those found changed
  /// (any fails the run: a migration lost bytes).
  public var movablePatternsChecked = 0
  public var movablePatternFailures = 0
  /// The allocator's migration and compaction events at the end.
  public var compaction = CompactionStatistics()
  /// With page_owner: `page_owner_sort --cull=stacktrace` of the pages held when the
  /// workers stopped, and the leak report after they gave everything back (quarantined
  /// pages stay held, as the kernel leaks them).
  public var pageOwnerSummary: String?
  public var leakReport: LeakReport?

  public var opsPerSecond: Double {
    elapsedNanoseconds > 0 ? Double(operations) * 1e9 / Double(elapsedNanoseconds) : 0
  }

  /// Whether the run found no problem.
  public var passed: Bool {
    verifyError == nil && unexpectedBadPages == 0 && pagesLeaked == 0 && badFreesCaught == badFreesInjected
      && badFreeReports == badFreesInjected && extensionReports.allSatisfy(\.failures.isEmpty)
      && movablePatternFailures == 0 && compaction.compactStall == compaction.compactSuccess + compaction.compactFail
  }

  /// Everything but the timing: equal for two single-thread runs with the same seed.
  public var deterministicFields: [String] {
    [
      "\(threads)", "\(seed)", "\(operations)", "\(operationsByKind.sorted { $0.key < $1.key })",
      "\(allocationFailures)", "\(failuresInjected)", "\(contigBusy)", "\(verifications)",
      "\(badFreesInjected)", "\(badFreesCaught)", "\(badFreeReports)", "\(badFreesByKind.sorted { $0.key < $1.key })",
      "\(badPages)",
      "\(quarantinedPages)", "\(pagesLeaked)", "\(stateChecksum)", "\(movablePatternsChecked)",
      "\(movablePatternFailures)", "\(compaction)",
    ] + extensionReports.map(\.formatted)
  }

  public var description: String {
    var s = ""
    s += "threads \(threads)  seed \(seed)\n"
    s += "operations \(operations) in \(fixed(Double(elapsedNanoseconds) / 1e9, 2)) s: \(Int(opsPerSecond)) ops/s\n"
    s +=
      "  " + operationsByKind.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ") + "\n"
    s += "allocation failures \(allocationFailures) (injected \(failuresInjected)), contig busy \(contigBusy)\n"
    s += "verifications \(verifications): \(verifyError ?? "ok")\n"
    s += "bad frees injected \(badFreesInjected), caught \(badFreesCaught), reports \(badFreeReports)"
    if !badFreesByKind.isEmpty {
      s +=
        " (" + badFreesByKind.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ") + ")"
    }
    s += "\n"
    s += "bad pages \(badPages) (unexpected \(unexpectedBadPages)), quarantined \(quarantinedPages)\n"
    s += "pages leaked \(pagesLeaked)\n"
    let c = compaction
    s +=
      "migration: \(c.pgmigrateSuccess) pages migrated, \(c.pgmigrateFail) failed; compaction: \(c.compactStall) direct (\(c.compactSuccess) succeeded, \(c.compactFail) failed), \(c.compactMigrateScanned) + \(c.compactFreeScanned) pfns scanned\n"
    s += "movable patterns checked \(movablePatternsChecked), changed \(movablePatternFailures)\n"
    for r in extensionReports { s += r.formatted + "\n" }
    s += "state checksum \(String(stateChecksum, radix: 16))\n"
    s += passed ? "PASS" : "FAIL"
    return s
  }
}

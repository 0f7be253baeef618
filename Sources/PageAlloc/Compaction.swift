// The public face of compaction: its configuration, results and counters. The work is in
// PageAllocator+Compaction.swift.

/// How compaction behaves: the kernel's CONFIG_COMPACTION and its sysctls
/// (`vm.compaction_proactiveness`, `vm.extfrag_threshold`), and whether kcompactd runs as a
/// background thread.
public struct CompactionConfiguration: Sendable, Hashable {
  /// Direct compaction in the allocation slow path (for a request of order above 0 that
  /// may reclaim and do I/O). Off: such a request fails as soon as the free lists cannot
  /// serve it, as on a kernel without CONFIG_COMPACTION.
  public var directCompaction: Bool
  /// `vm.compaction_proactiveness` (0...100, default 20): how low proactive compaction
  /// drives the node's fragmentation score. 0 turns proactive compaction off.
  public var proactiveness: Int
  /// `vm.extfrag_threshold` (0...1000, default 500): direct compaction of a costly order
  /// is skipped when the zone's fragmentation index says a failure comes from lack of
  /// memory (an index at or below the threshold), not from fragmentation.
  public var extfragThreshold: Int
  /// Runs kcompactd as a background thread: it sleeps ``kcompactdIntervalMilliseconds``
  /// at a time (forever when proactiveness is 0), compacts proactively when the node's
  /// score is above the high mark, and compacts for the orders that failing allocations
  /// wake it for. Off (the default): ``PageAllocator/compactProactively()`` and
  /// ``PageAllocator/runKcompactd(timedOut:)`` do the same work when called.
  public var backgroundThread: Bool
  /// kcompactd's period (HPAGE_FRAG_CHECK_INTERVAL_MSEC, 500 ms).
  public var kcompactdIntervalMilliseconds: Int

  public init(
    directCompaction: Bool = true, proactiveness: Int = 20, extfragThreshold: Int = 500,
    backgroundThread: Bool = false, kcompactdIntervalMilliseconds: Int = 500
  ) {
    self.directCompaction = directCompaction
    self.proactiveness = proactiveness
    self.extfragThreshold = extfragThreshold
    self.backgroundThread = backgroundThread
    self.kcompactdIntervalMilliseconds = kcompactdIntervalMilliseconds
  }
}

/// The outcome of a compaction: the kernel's `enum compact_result`, in its order (the
/// kernel takes the maximum of several zones' results, so the order matters).
public enum CompactionResult: Int, Sendable, Hashable, Comparable, CustomStringConvertible {
  /// The zone is not suitable for compaction (the fragmentation index says no).
  case notSuitableZone = 0
  /// Not enough free memory for migration targets, or compaction is off.
  case skipped = 1
  /// Deferred after recent failures.
  case deferred = 2
  /// No block of the order yet (the raw result of `__compact_finished`).
  case noSuitablePage = 3
  /// Keep going.
  case `continue` = 4
  /// The whole zone was scanned without making a block of the order.
  case complete = 5
  /// A scan that started part way through the zone met the other scanner.
  case partialSkipped = 6
  /// Lock contention (asynchronous compaction) or no target memory: stopped early.
  case contended = 7
  /// A block of the order is free (or was captured).
  case success = 8

  public static func < (a: CompactionResult, b: CompactionResult) -> Bool { a.rawValue < b.rawValue }

  /// The `compaction_status_string` the traces print.
  public var description: String {
    switch self {
    case .notSuitableZone: "not_suitable_zone"
    case .skipped: "skipped"
    case .deferred: "deferred"
    case .noSuitablePage: "no_suitable_page"
    case .continue: "continue"
    case .complete: "complete"
    case .partialSkipped: "partial_skipped"
    case .contended: "contended"
    case .success: "success"
    }
  }
}

/// What ``PageAllocator/compactProactively()`` did.
public struct ProactiveCompaction: Sendable, Hashable {
  /// Whether the node's score was above the high mark, so compaction ran.
  public var ran: Bool
  /// The node's fragmentation score (0...100) before and after.
  public var scoreBefore: Int
  public var scoreAfter: Int
}

/// The compaction and migration events of /proc/vmstat, in its order.
public struct CompactionStatistics: Sendable, Hashable {
  /// pgmigrate_success / pgmigrate_fail: base pages migrated, and failed.
  public var pgmigrateSuccess: Int
  public var pgmigrateFail: Int
  /// thp_migration_success / _fail / _split: blocks of pageblock order or more.
  public var thpMigrationSuccess: Int
  public var thpMigrationFail: Int
  public var thpMigrationSplit: Int
  /// compact_migrate_scanned / compact_free_scanned: pfns the two scanners looked at.
  public var compactMigrateScanned: Int
  public var compactFreeScanned: Int
  /// compact_isolated: pages isolated by both scanners.
  public var compactIsolated: Int
  /// compact_stall: direct compactions that ran; compact_fail + compact_success of them.
  public var compactStall: Int
  public var compactFail: Int
  public var compactSuccess: Int
  /// compact_daemon_wake and kcompactd's scanned pfns.
  public var compactDaemonWake: Int
  public var compactDaemonMigrateScanned: Int
  public var compactDaemonFreeScanned: Int

  /// The /proc/vmstat lines, in the kernel's order.
  public var vmstatItems: [(name: String, value: Int)] {
    [
      ("pgmigrate_success", pgmigrateSuccess), ("pgmigrate_fail", pgmigrateFail),
      ("thp_migration_success", thpMigrationSuccess), ("thp_migration_fail", thpMigrationFail),
      ("thp_migration_split", thpMigrationSplit), ("compact_migrate_scanned", compactMigrateScanned),
      ("compact_free_scanned", compactFreeScanned), ("compact_isolated", compactIsolated),
      ("compact_stall", compactStall), ("compact_fail", compactFail), ("compact_success", compactSuccess),
      ("compact_daemon_wake", compactDaemonWake), ("compact_daemon_migrate_scanned", compactDaemonMigrateScanned),
      ("compact_daemon_free_scanned", compactDaemonFreeScanned),
    ]
  }
}

extension CompactionStatistics {
  /// All zero: nothing migrated or compacted yet.
  public init() {
    (pgmigrateSuccess, pgmigrateFail, thpMigrationSuccess, thpMigrationFail, thpMigrationSplit) = (0, 0, 0, 0, 0)
    (compactMigrateScanned, compactFreeScanned, compactIsolated, compactStall, compactFail) = (0, 0, 0, 0, 0)
    (compactSuccess, compactDaemonWake, compactDaemonMigrateScanned, compactDaemonFreeScanned) = (0, 0, 0, 0)
  }
}

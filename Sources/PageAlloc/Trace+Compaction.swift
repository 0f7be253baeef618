internal import _PageAllocUtilities
import Synchronization

// The compaction and migration trace points: the TP_printk text of
// trace/events/compaction.h, trace/events/migrate.h and trace/events/page_isolation.h, and
// the allocator's calls that fire them. Each event carries its numbers in
// `TraceEvent.values`, in the order its `TraceEvent.Kind` case lists.

extension TraceEvent {
  /// The event's text after `name: ` for the compaction and migration events, or nil for
  /// the page events.
  var compactionText: String? {
    let v = values
    func at(_ i: Int) -> Int { i < v.count ? v[i] : 0 }
    func hex(_ i: Int) -> String { "0x" + String(at(i), radix: 16) }
    func zone(_ i: Int) -> String { padRight(ZoneKind(rawValue: at(i))?.description ?? "?", 8) }
    func status(_ i: Int) -> String { CompactionResult(rawValue: at(i))?.description ?? "?" }
    func mode(_ i: Int) -> String { MigrationMode(rawValue: at(i))?.description ?? "?" }
    func reason(_ i: Int) -> String { MigrateReason(rawValue: at(i))?.description ?? "?" }
    switch kind {
    case .pageAlloc, .pageFree, .pageFreeBatched, .pageAllocZoneLocked, .pagePcpuDrain, .pageAllocExtfrag:
      return nil
    case .compactionIsolateMigratepages, .compactionIsolateFreepages:
      return "range=(\(hex(0)) ~ \(hex(1))) nr_scanned=\(at(2)) nr_taken=\(at(3))"
    case .compactionMigratepages:
      return "nr_migrated=\(at(0)) nr_failed=\(at(1))"
    case .compactionBegin:
      return
        "zone_start=\(hex(0)) migrate_pfn=\(hex(1)) free_pfn=\(hex(2)) zone_end=\(hex(3)), mode=\(at(4) != 0 ? "sync" : "async")"
    case .compactionEnd:
      return
        "zone_start=\(hex(0)) migrate_pfn=\(hex(1)) free_pfn=\(hex(2)) zone_end=\(hex(3)), mode=\(at(4) != 0 ? "sync" : "async") status=\(status(5))"
    case .compactionTryToCompactPages:
      return "order=\(at(0)) gfp_mask=\(gfp.description) priority=\(at(1))"
    case .compactionSuitable, .compactionFinished:
      return "node=0 zone=\(zone(0)) order=\(at(1)) ret=\(status(2))"
    case .compactionDeferred, .compactionDeferCompaction, .compactionDeferReset:
      return "node=0 zone=\(zone(0)) order=\(at(1)) order_failed=\(at(2)) consider=\(at(3)) limit=\(1 << at(4))"
    case .compactionKcompactdSleep:
      return "nid=\(at(0))"
    case .compactionWakeupKcompactd, .compactionKcompactdWake:
      return "nid=\(at(0)) order=\(at(1)) classzone_idx=\(zone(2))"
    case .migratePagesStart:
      return "mode=\(mode(0)) reason=\(reason(1))"
    case .migratePages:
      return
        "nr_succeeded=\(at(0)) nr_failed=\(at(1)) nr_thp_succeeded=\(at(2)) nr_thp_failed=\(at(3)) nr_thp_split=\(at(4)) nr_split=\(at(5)) mode=\(mode(6)) reason=\(reason(7))"
    case .testPagesIsolated:
      return "start_pfn=\(hex(0)) end_pfn=\(hex(1)) fin_pfn=\(hex(2)) ret=\(at(1) <= at(2) ? "success" : "fail")"
    }
  }
}

extension PageAllocator {
  /// Fires a compaction or migration event when a sink is installed.
  @inline(__always)
  func traceCompaction(_ kind: TraceEvent.Kind, _ values: @autoclosure () -> [Int], gfp: GFP = []) {
    if _slowPath(tracing.load(ordering: .relaxed)) {
      emit(TraceEvent(kind: kind, pfn: nil, order: 0, gfp: gfp, cpu: -1, values: values()))
    }
  }

  func traceMigrateStart(_ mode: MigrationMode, _ reason: MigrateReason) {
    traceCompaction(.migratePagesStart, [mode.rawValue, reason.rawValue])
  }

  func traceMigrate(_ s: MigrateStats, _ mode: MigrationMode, _ reason: MigrateReason) {
    traceCompaction(
      .migratePages, [s.succeeded, s.failedPages, s.thpSucceeded, s.thpFailed, 0, 0, mode.rawValue, reason.rawValue])
  }

  /// The defer events read the zone's fields at trace time.
  func traceDefer(_ kind: TraceEvent.Kind, _ zi: Int, _ order: Int) {
    let c = compaction.zones + zi
    traceCompaction(
      kind,
      [
        zones[zi].kind.rawValue, order, c.pointee.orderFailed.load(ordering: .relaxed),
        c.pointee.considered.load(ordering: .relaxed), c.pointee.deferShift.load(ordering: .relaxed),
      ])
  }
}

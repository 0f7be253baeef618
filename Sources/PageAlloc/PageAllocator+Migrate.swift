import CPageAllocShim
import Glibc
import Synchronization

// Migration of movable pages (mm/migrate.c for pages with movable operations):
// `isolate_movable_ops_page()`, `putback_movable_pages()`, `migrate_pages()` with
// `migrate_pages_batch()` and `migrate_pages_sync()`, and the bookkeeping of a successful
// move. Compaction (PageAllocator+Compaction.swift) and contiguous-range allocation
// (PageAllocator+ContigAlloc.swift) feed it isolated pages and a supply of targets.
//
// References, as the kernel's contract for movable_ops pages says it: the owner holds one
// reference; isolation takes a second; a target comes with one (the allocator's). On
// success the target's reference becomes the owner's, and both references on the source
// are dropped, which frees it through the ordinary free path (where a direct compaction
// may capture the merged block). On failure nothing changes but the isolation, which the
// putback ends.

/// A movable block taken for migration: its head, order and owner (the owner is read once,
/// at isolation, so a registration cleared meanwhile cannot strand the block).
struct IsolatedMovable {
  var pfn: Int
  var order: Int
  var owner: any MovablePageOwner
}

/// Where migration targets come from, and where an unused one goes back:
/// `get_new_folio` / `put_new_folio` of `migrate_pages()`.
protocol MigrationTargets {
  /// A block of `source`'s order, allocated (refcount 1; compound when the source is),
  /// or nil when none can be had (-ENOMEM).
  mutating func allocateTarget(_ a: PageAllocator, for source: IsolatedMovable) -> Int?
  /// Takes back a target the migration did not use (refcount 1, as handed out).
  mutating func releaseTarget(_ a: PageAllocator, _ pfn: Int, order: Int)
}

/// -ENOMEM, as `migrate_pages()` returns it.
let migrateNoMemory = -12

/// Per-call statistics of `migrate_pages()` (`struct migrate_pages_stats`).
struct MigrateStats {
  var succeeded = 0
  var failedPages = 0
  var thpSucceeded = 0
  var thpFailed = 0
}

extension PageAllocator {
  /// NR_MAX_BATCHED_MIGRATION: base pages per `migrate_pages_batch()`.
  static let migrateBatchPages = PageGeometry.pageblockPages
  /// NR_MAX_MIGRATE_PAGES_RETRY, NR_MAX_MIGRATE_ASYNC_RETRY, NR_MAX_MIGRATE_SYNC_RETRY.
  static let migrateRetries = 10
  static let migrateAsyncRetries = 3
  static let migrateSyncRetries = 7

  // MARK: - Isolation

  /// `isolate_movable_ops_page()`: takes the movable block at `pfn` for migration, or
  /// returns nil (freed, pinned, isolated by someone else, or refused by its owner).
  ///
  /// The reference is taken only from exactly one (the owner's): a block with more
  /// references is pinned, which is the kernel's rule for anonymous pages with more
  /// references than mappings. The isolated flag is then set with one atomic
  /// test-and-set: the page lock of the kernel's sequence, since two compactions may meet
  /// on one block.
  func isolateMovableOpsPage(_ pfn: Int, mode: MigrationMode) -> IsolatedMovable? {
    let r = memMap.presentRecord(pfn)
    guard r.pointee.refcount.compareExchange(expected: 1, desired: 2, ordering: .acquiring).exchanged else {
      return nil
    }
    let w = r.pointee.flags.load(ordering: .acquiring)
    // A page reported bad (quarantined, hwpoisoned) stays where it is, as the kernel leaks
    // such a page rather than move it.
    guard w & PG.movable != 0, w & (PG.tail | PG.freeMask | PG.quarantined | PG.hwpoison | PG.reserved) == 0 else {
      putRef(pfn, "isolateMovable")
      return nil
    }
    let old = r.pointee.flags.bitwiseOr(PG.movableIsolated, ordering: .acquiringAndReleasing).oldValue
    if old & PG.movableIsolated != 0 {
      putRef(pfn, "isolateMovable")
      return nil
    }
    let order = PG.order(w)
    guard let owner = compaction.owners.owner(pfn), owner.isolatePage(PFN(pfn), order: order, mode: mode) else {
      r.pointee.flags.bitwiseAnd(~PG.movableIsolated, ordering: .releasing)
      putRef(pfn, "isolateMovable")
      return nil
    }
    return IsolatedMovable(pfn: pfn, order: order, owner: owner)
  }

  /// `putback_movable_pages()`: gives every isolated block back to its owner and drops the
  /// isolation's reference (which frees a block its owner freed meanwhile).
  func putbackMovablePages(_ list: inout [IsolatedMovable]) {
    for m in list {
      m.owner.putBackPage(PFN(m.pfn), order: m.order)
      memMap.presentRecord(m.pfn).pointee.flags.bitwiseAnd(~PG.movableIsolated, ordering: .releasing)
      putRef(m.pfn, "putbackMovable")
    }
    list.removeAll(keepingCapacity: true)
  }

  /// `put_page()` of a head the caller holds a reference to: frees the block when that was
  /// the last reference.
  func putRef(_ pfn: Int, _ op: String) {
    let r = memMap.presentRecord(pfn)
    let old = r.pointee.refcount.wrappingSubtract(1, ordering: .acquiringAndReleasing).oldValue
    if _fastPath(old > 1) { return }
    if old <= 0 {
      refcountUnderflow(pfn, r, op)
      return
    }
    guard let zi = zoneIndex(pfn) else { return }
    freeBlockChecked(pfn, PG.order(r.pointee.flags.load(ordering: .relaxed)), zi, op)
  }

  // MARK: - migrate_pages

  /// `migrate_pages()` for movable_ops blocks: moves each block of `list` to a target from
  /// `targets`. Returns the number of blocks not migrated, or ``migrateNoMemory`` when the
  /// targets ran out; the blocks not migrated are left in `list` (still isolated) for the
  /// caller to put back or retry, the migrated ones are gone from it. `succeeded` gets the
  /// base pages migrated.
  ///
  /// Asynchronous mode runs batches of up to 512 base pages through 10 passes; the
  /// synchronous modes run each batch through 3 asynchronous passes first, then every block
  /// that failed there alone through 7 passes in the real mode.
  func migratePages<T: MigrationTargets>(
    _ list: inout [IsolatedMovable], _ targets: inout T, mode: MigrationMode, reason: MigrateReason,
    succeeded: inout Int
  ) -> Int {
    traceMigrateStart(mode, reason)
    var stats = MigrateStats()
    var failed: [IsolatedMovable] = []
    var rcTotal = 0
    var i = 0
    let all = list
    list.removeAll(keepingCapacity: true)
    outer: while i < all.count {
      var batch: [IsolatedMovable] = []
      var pages = 0
      while i < all.count && (batch.isEmpty || pages + (1 << all[i].order) <= PageAllocator.migrateBatchPages) {
        pages += 1 << all[i].order
        batch.append(all[i])
        i += 1
      }
      if mode == .async {
        let rc = migrateBatch(batch, &targets, .async, reason, passes: PageAllocator.migrateRetries, &stats, &failed)
        if rc < 0 {
          rcTotal = rc
          break outer
        }
        rcTotal += rc
      } else {
        // migrate_pages_sync(): the asynchronous attempt's failures are not counted; every
        // block it could not move is retried alone in the real mode.
        var asyncStats = MigrateStats()
        var retry: [IsolatedMovable] = []
        let rc = migrateBatch(
          batch, &targets, .async, reason, passes: PageAllocator.migrateAsyncRetries, &asyncStats, &retry)
        stats.succeeded += asyncStats.succeeded
        stats.thpSucceeded += asyncStats.thpSucceeded
        if rc < 0 {
          stats.failedPages += asyncStats.failedPages
          stats.thpFailed += asyncStats.thpFailed
          failed += retry
          rcTotal = rc
          break outer
        }
        var k = 0
        while k < retry.count {
          let rc1 = migrateBatch(
            [retry[k]], &targets, mode, reason, passes: PageAllocator.migrateSyncRetries, &stats, &failed)
          k += 1
          if rc1 < 0 {
            failed += retry[k...]
            rcTotal = rc1
            break outer
          }
          rcTotal += rc1
        }
      }
    }
    // Blocks never tried (after -ENOMEM) go back with the failures, uncounted.
    if i < all.count { failed += all[i...] }
    list = failed
    if list.isEmpty { rcTotal = 0 }
    let c = compaction.counters
    c.pgmigrateSuccess.wrappingAdd(stats.succeeded, ordering: .relaxed)
    c.pgmigrateFail.wrappingAdd(stats.failedPages, ordering: .relaxed)
    c.thpMigrationSuccess.wrappingAdd(stats.thpSucceeded, ordering: .relaxed)
    c.thpMigrationFail.wrappingAdd(stats.thpFailed, ordering: .relaxed)
    traceMigrate(stats, mode, reason)
    succeeded = stats.succeeded
    return rcTotal
  }

  /// `migrate_pages_batch()`: the unmap phase takes a target for each block (for a
  /// movable_ops block there is nothing to unmap, and the isolation already holds the
  /// kernel's page lock), the move phase copies and asks the owner, `passes` times for the
  /// blocks that answer ``MigrationResult/again``. Failed blocks are appended to `failed`.
  /// Returns the number of failed blocks, or ``migrateNoMemory``.
  func migrateBatch<T: MigrationTargets>(
    _ batch: [IsolatedMovable], _ targets: inout T, _ mode: MigrationMode, _ reason: MigrateReason, passes: Int,
    _ stats: inout MigrateStats,
    _ failed: inout [IsolatedMovable]
  ) -> Int {
    var pairs: [(src: IsolatedMovable, dst: Int)] = []
    pairs.reserveCapacity(batch.count)
    var noMemory = false
    var nrFailed = 0
    var idx = 0
    while idx < batch.count {
      let f = batch[idx]
      guard let dst = targets.allocateTarget(self, for: f) else {
        noMemory = true
        nrFailed += 1
        stats.failedPages += 1 << f.order
        if f.order >= PageGeometry.pageblockOrder { stats.thpFailed += 1 }
        break
      }
      pairs.append((f, dst))
      idx += 1
    }
    if noMemory && pairs.isEmpty {
      failed += batch[idx...]
      return migrateNoMemory
    }
    var pending = pairs
    var pass = 0
    while pass < passes && !pending.isEmpty {
      var again: [(src: IsolatedMovable, dst: Int)] = []
      for (src, dst) in pending {
        switch moveOne(src, dst, mode, reason, &targets) {
        case .success:
          stats.succeeded += 1 << src.order
          if src.order >= PageGeometry.pageblockOrder { stats.thpSucceeded += 1 }
        case .again:
          again.append((src, dst))
        case .failure:
          targets.releaseTarget(self, dst, order: src.order)
          failed.append(src)
          nrFailed += 1
          stats.failedPages += 1 << src.order
          if src.order >= PageGeometry.pageblockOrder { stats.thpFailed += 1 }
        }
      }
      pending = again
      pass += 1
    }
    for (src, dst) in pending {
      targets.releaseTarget(self, dst, order: src.order)
      failed.append(src)
      nrFailed += 1
      stats.failedPages += 1 << src.order
      if src.order >= PageGeometry.pageblockOrder { stats.thpFailed += 1 }
    }
    if noMemory {
      failed += batch[idx...]
      return migrateNoMemory
    }
    return nrFailed
  }

  /// One move: the bytes to `dst`, then the owner's `migrate_page()`. A block whose owner
  /// dropped its reference while it was isolated is done already: it is freed, and the
  /// target goes back unused.
  func moveOne<T: MigrationTargets>(
    _ src: IsolatedMovable, _ dst: Int, _ mode: MigrationMode, _ reason: MigrateReason, _ targets: inout T
  ) -> MigrationResult {
    let r = memMap.presentRecord(src.pfn)
    if r.pointee.refcount.load(ordering: .acquiring) == 1 {
      // Only the isolation's reference is left: the owner freed the block meanwhile.
      r.pointee.flags.bitwiseAnd(~PG.movableIsolated, ordering: .releasing)
      targets.releaseTarget(self, dst, order: src.order)
      putRef(src.pfn, "migrate")
      return .success
    }
    if let from = arena.address(of: src.pfn), let to = arena.address(of: dst) {
      memcpy(to, from, PageGeometry.pageSize << src.order)
    }
    // The target is made the block before the owner learns of it, as the kernel copies
    // the folio's flags and page_owner record before the new folio becomes visible: once
    // `migratePage` has repointed the owner, another thread may free `dst` at once, and
    // nothing here may touch it after that. Until then the owner does not know `dst`, so a
    // compaction on another thread that finds it movable is refused by the owner.
    compaction.owners.move(src.pfn, to: dst)
    // page_owner: the new block takes over the old one's record, with the reason.
    ownerMigrate(from: src.pfn, to: dst, order: src.order, reason: reason)
    let d = memMap.presentRecord(dst)
    d.pointee.flags.bitwiseOr(PG.movable, ordering: .releasing)
    let rc = src.owner.migratePage(from: PFN(src.pfn), to: PFN(dst), order: src.order, mode: mode)
    if rc == .success {
      finishMigration(src)
    } else {
      // Refused: `dst` was never the owner's; the registration goes back to the source.
      d.pointee.flags.bitwiseAnd(~PG.movable, ordering: .releasing)
      compaction.owners.move(dst, to: src.pfn)
    }
    return rc
  }

  /// The owner moved to the target (which holds the registration and the target's
  /// reference, now the owner's): the source loses the owner's and the isolation's
  /// references.
  func finishMigration(_ src: IsolatedMovable) {
    let r = memMap.presentRecord(src.pfn)
    r.pointee.flags.bitwiseAnd(~PG.movableMask, ordering: .releasing)
    putRef(src.pfn, "migrate")
    putRef(src.pfn, "migrate")
  }

  /// Prepares a free block taken off the lists (flags 0, refcount 0) as an allocated
  /// target of `order` for `source`: `post_alloc_hook()` and, for a compound source,
  /// `prep_compound_page()`.
  func prepareTarget(_ pfn: Int, order: Int, compound: Bool) {
    let r = memMap.presentRecord(pfn)
    if compound && order > 0 {
      r.pointee.flags.store(PG.word(flags: PG.head, order: order), ordering: .relaxed)
      var p = pfn + 1
      while p < pfn + (1 << order) {
        memMap.presentRecord(p).pointee.flags.store(PG.tail, ordering: .relaxed)
        p += 1
      }
    } else {
      r.pointee.flags.store(PG.word(flags: 0, order: order), ordering: .relaxed)
    }
    r.pointee.refcount.store(1, ordering: .releasing)
    // post_alloc_hook()'s debug steps: a protected free page becomes accessible (the copy
    // writes it), its poison is checked, page_owner records the allocation (which the
    // migration then replaces with the source's record).
    if _slowPath(debugging) { debugAllocHook(pfn, order, .movable) }
  }

  /// Undoes ``prepareTarget(_:order:compound:)`` for an unused target: flags and refcount
  /// back to a free block's, ready for the free lists. Returns false when someone else took
  /// a reference meanwhile (the block cannot come back).
  func unprepareTarget(_ pfn: Int, order: Int) -> Bool {
    let r = memMap.presentRecord(pfn)
    let old = r.pointee.refcount.wrappingSubtract(1, ordering: .acquiringAndReleasing).oldValue
    guard old == 1 else { return false }
    r.pointee.flags.store(0, ordering: .relaxed)
    var p = pfn + 1
    while p < pfn + (1 << order) {
      memMap.presentRecord(p).pointee.flags.store(0, ordering: .relaxed)
      p += 1
    }
    // free_pages_prepare()'s debug steps, as `compaction_free()` runs them.
    if _slowPath(debugging) { debugFreeHook(pfn, 1 << order) }
    return true
  }

  /// Whether the block at `pfn` is a compound head.
  func isCompound(_ pfn: Int) -> Bool {
    memMap.presentRecord(pfn).pointee.flags.load(ordering: .relaxed) & PG.head != 0
  }
}

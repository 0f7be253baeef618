internal import _PageAllocUtilities
import CPageAllocShim
import Synchronization

// page_owner (mm/page_owner.c): the records the debug hooks write, `__set_page_owner()`,
// `__reset_page_owner()` and `__folio_copy_owner()`, and the readers: one page's record,
// the /sys/kernel/debug/page_owner dump, a page_owner_sort summary and the leak report.
//
// As in the kernel (one record per struct page in page_ext), every page of a block has its
// own record, written on allocation and on free: O(2^order) stores of 32 bytes. The
// records sit in a side table indexed by pfn, not in the 16-byte page record, so the
// allocator's own memory does not grow when page_owner is off.

extension PageAllocator {
  // MARK: - Writers (the page's owner thread, no lock)

  /// `__set_page_owner()` for `count` pages from `pfn`, each recorded as part of an
  /// allocation of `order`. The free fields keep the previous life's last free.
  func ownerAlloc(
    _ table: UnsafeMutablePointer<cpa_owner_record>, _ pfn: Int, _ count: Int, _ order: Int, _ gfp: GFP,
    _ handle: UInt32
  ) {
    let word = (monotonicNanoseconds() &<< 8) | UInt64(truncatingIfNeeded: order & 0xff)
    let task = cpa_current_task()
    var r = table + (pfn &- debug.basePFN)
    let end = r + count
    while r < end {
      r.pointee.handle = handle
      r.pointee.gfp = gfp.rawValue
      r.pointee.task = task
      r.pointee.alloc_word = word
      // OWNER and OWNER_ALLOCATED set, the migrate reason back to "never".
      r.pointee.free_word = (r.pointee.free_word & ~0xff) | UInt64(CPA_OWNER_SET | CPA_OWNER_ALLOCATED)
      r += 1
    }
  }

  /// `__reset_page_owner()` for `count` pages from `pfn`: each is freed now, by this
  /// thread, from the stack `handle`. The allocation fields stay for the next report.
  func ownerFree(_ table: UnsafeMutablePointer<cpa_owner_record>, _ pfn: Int, _ count: Int, _ handle: UInt32) {
    let stamp = monotonicNanoseconds() &<< 8
    let task = cpa_current_task()
    var r = table + (pfn &- debug.basePFN)
    let end = r + count
    while r < end {
      r.pointee.free_handle = handle
      r.pointee.free_task = task
      r.pointee.free_word = stamp | (r.pointee.free_word & 0xff & ~UInt64(CPA_OWNER_ALLOCATED))
      r += 1
    }
  }

  /// `__folio_copy_owner()` + `folio_set_owner_migrate_reason()`: the hook for migration
  /// (compaction, contiguous ranges). The `2^order` records of the block at `new` take over
  /// those of the block at `old`, and `new`'s head records why it moved. Nothing happens
  /// when page_owner is off.
  func ownerMigrate(from old: Int, to new: Int, order: Int, reason: MigrateReason) {
    guard let table = debug.owner else { return }
    let n = 1 << order
    let src = table + (old - debug.basePFN)
    let dst = table + (new - debug.basePFN)
    for i in 0..<n { dst[i] = src[i] }
    dst.pointee.free_word = (dst.pointee.free_word & ~0xf0) | (UInt64(reason.rawValue + 1) << 4)
  }

  // MARK: - Readers

  /// Whether page_owner records allocations (``Configuration/pageOwner``).
  public var isPageOwnerEnabled: Bool { debug.owner != nil }

  /// The page_owner record of `pfn` (`__dump_page_owner()`'s source): the allocation the
  /// page belongs to (or last belonged to) and its last free. Nil when page_owner is off,
  /// the pfn has no page, or the page was never allocated since the allocator started.
  ///
  /// A tail page has its own record, a copy of its head's, as in the kernel.
  public func pageOwner(of pfn: PFN) -> PageOwnerRecord? {
    guard let table = debug.owner, memMap.record(pfn.value) != nil else { return nil }
    return ownerSnapshot(table, pfn.value)
  }

  func ownerSnapshot(_ table: UnsafeMutablePointer<cpa_owner_record>, _ pfn: Int) -> PageOwnerRecord? {
    let r = table[pfn &- debug.basePFN]
    let flags = UInt32(truncatingIfNeeded: r.free_word & 0xff)
    guard flags & CPA_OWNER_SET != 0 else { return nil }
    let reason = Int((r.free_word >> 4) & 0xf)
    let freed = r.free_handle != 0
    let w = memMap.record(pfn)?.pointee.flags.load(ordering: .relaxed) ?? 0
    return PageOwnerRecord(
      pfn: PFN(pfn), isAllocated: flags & CPA_OWNER_ALLOCATED != 0, order: Int(r.alloc_word & 0xff),
      gfp: GFP(rawValue: r.gfp), task: PageOwnerTask(index: r.task), timestamp: r.alloc_word >> 8,
      allocationStack: r.handle > CPA_DEPOT_FAILURE ? PageOwnerStack(handle: r.handle) : nil,
      freeTask: freed ? PageOwnerTask(index: r.free_task) : nil, freeTimestamp: freed ? r.free_word >> 8 : nil,
      freeStack: r.free_handle > CPA_DEPOT_FAILURE ? PageOwnerStack(handle: r.free_handle) : nil,
      lastMigrateReason: reason > 0 ? MigrateReason(rawValue: reason - 1) : nil,
      pageblockMigrateType: memMap.storedMigrateType(pfn),
      flags: PageFlags(rawValue: w & PG.flagMask).intersection(.settable),
      zone: zoneIndex(pfn).map { zones[$0].kind })
  }

  /// Every allocation page_owner sees now, one record per allocation (its head page), in
  /// pfn order: the walk of `read_page_owner()`. Free blocks are skipped whole, as are
  /// pages never allocated, pages freed since, and pages not aligned to their recorded
  /// order (tail pages). Empty when page_owner is off.
  ///
  /// - Complexity: O(pages of the zones). The walk reads records without locks, as the
  ///   kernel's does: an allocation or free racing with it may be seen half done.
  public func pageOwnerRecords() -> [PageOwnerRecord] {
    guard let table = debug.owner else { return [] }
    var out: [PageOwnerRecord] = []
    for zi in 0..<zoneCount {
      var pfn = zones[zi].start
      let end = zones[zi].end
      while pfn < end {
        guard let pr = memMap.record(pfn) else {
          pfn = min(memMap.sectionEnd(pfn), end)
          continue
        }
        let w = pr.pointee.flags.load(ordering: .relaxed)
        if w & PG.freeMask != 0 {
          // A free block's head: skip the block (clamped, as the order is read unlocked).
          pfn = min(pfn &+ (1 &<< min(PG.order(w), PageGeometry.maxOrder)), end)
          continue
        }
        let r = table[pfn &- debug.basePFN]
        let f = UInt32(truncatingIfNeeded: r.free_word & 0xff)
        let order = Int(r.alloc_word & 0xff)
        if f & CPA_OWNER_ALLOCATED != 0, r.handle != 0, pfn & ((1 &<< order) &- 1) == 0,
          let rec = ownerSnapshot(table, pfn)
        {
          out.append(rec)
        }
        pfn &+= 1
      }
    }
    return out
  }

  /// The whole `/sys/kernel/debug/page_owner` file: ``PageOwnerRecord/debugfsText`` of
  /// every record of ``pageOwnerRecords()``.
  public func pageOwnerText() -> String {
    pageOwnerRecords().map(\.debugfsText).joined()
  }

  /// The live allocations grouped by allocation stack, most allocations first (ties: most
  /// pages, then lowest pfn): the groups of `page_owner_sort --cull=stacktrace`.
  public func pageOwnerStacks() -> [PageOwnerStackGroup] {
    groupByStack(pageOwnerRecords()).sorted {
      ($0.allocations, $0.pages, -$0.heads[0].value) > ($1.allocations, $1.pages, -$1.heads[0].value)
    }
  }

  /// tools/mm/page_owner_sort's output for ``pageOwnerText()`` with `--cull=stacktrace`
  /// (grouped by stack, sorted by count): per stack, `N times, M pages:`, the stack, and an
  /// empty line.
  public func pageOwnerSummary() -> String {
    pageOwnerStacks().map { g in
      "\(g.allocations) times, \(g.pages) pages:\n" + (g.stack?.text ?? "") + "\n"
    }.joined()
  }

  /// The allocations still live, grouped by allocation stack, the stacks holding the most
  /// pages first: at a point where every page should be back (the end of a test, a
  /// shutdown), each group is a leak and its stack says where it was allocated. Empty when
  /// page_owner is off (``isPageOwnerEnabled``).
  public func leakReport() -> LeakReport {
    let groups = groupByStack(pageOwnerRecords()).sorted {
      ($0.pages, $0.allocations, -$0.heads[0].value) > ($1.pages, $1.allocations, -$1.heads[0].value)
    }
    return LeakReport(groups: groups)
  }

  private func groupByStack(_ records: [PageOwnerRecord]) -> [PageOwnerStackGroup] {
    var byHandle: [UInt32: PageOwnerStackGroup] = [:]
    var order: [UInt32] = []
    for r in records {
      let h = r.allocationStack?.handle ?? 0
      if byHandle[h] == nil {
        byHandle[h] = PageOwnerStackGroup(stack: r.allocationStack, allocations: 0, pages: 0, heads: [], tasks: [])
        order.append(h)
      }
      byHandle[h]!.allocations += 1
      byHandle[h]!.pages += 1 << r.order
      byHandle[h]!.heads.append(r.pfn)
      if !byHandle[h]!.tasks.contains(r.task) { byHandle[h]!.tasks.append(r.task) }
    }
    return order.map { byHandle[$0]! }
  }
}

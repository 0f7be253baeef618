internal import _PageAllocUtilities
import CPageAllocShim
import Synchronization

/// A kmem trace event, fired where the kernel fires it.
public struct TraceEvent: Sendable, Hashable {
  public enum Kind: String, Sendable, CaseIterable {
    case pageAlloc = "mm_page_alloc"
    case pageFree = "mm_page_free"
    case pageFreeBatched = "mm_page_free_batched"
    case pageAllocZoneLocked = "mm_page_alloc_zone_locked"
    case pagePcpuDrain = "mm_page_pcpu_drain"
    /// A fallback to another migratetype's free list: a pageblock claimed or a block
    /// stolen (`__rmqueue_claim()`, `__rmqueue_steal()`).
    case pageAllocExtfrag = "mm_page_alloc_extfrag"
    // Compaction and migration (trace/events/compaction.h, migrate.h, page_isolation.h):
    // their numbers are in ``TraceEvent/values``, in the order each case lists.
    /// `[start_pfn, end_pfn, nr_scanned, nr_taken]`
    case compactionIsolateMigratepages = "mm_compaction_isolate_migratepages"
    /// `[start_pfn, end_pfn, nr_scanned, nr_taken]`
    case compactionIsolateFreepages = "mm_compaction_isolate_freepages"
    /// `[nr_migrated, nr_failed]`
    case compactionMigratepages = "mm_compaction_migratepages"
    /// `[zone_start, migrate_pfn, free_pfn, zone_end, sync]`
    case compactionBegin = "mm_compaction_begin"
    /// `[zone_start, migrate_pfn, free_pfn, zone_end, sync, status]` (status: a
    /// ``CompactionResult`` raw value)
    case compactionEnd = "mm_compaction_end"
    /// `[order, priority]`; the request's flags in ``TraceEvent/gfp``
    case compactionTryToCompactPages = "mm_compaction_try_to_compact_pages"
    /// `[zone kind, order, status]`
    case compactionSuitable = "mm_compaction_suitable"
    /// `[zone kind, order, status]`
    case compactionFinished = "mm_compaction_finished"
    /// `[zone kind, order, order_failed, considered, defer_shift]`
    case compactionDeferred = "mm_compaction_deferred"
    /// `[zone kind, order, order_failed, considered, defer_shift]`
    case compactionDeferCompaction = "mm_compaction_defer_compaction"
    /// `[zone kind, order, order_failed, considered, defer_shift]`
    case compactionDeferReset = "mm_compaction_defer_reset"
    /// `[nid]`
    case compactionKcompactdSleep = "mm_compaction_kcompactd_sleep"
    /// `[nid, order, highest zone kind]`
    case compactionWakeupKcompactd = "mm_compaction_wakeup_kcompactd"
    /// `[nid, order, highest zone kind]`
    case compactionKcompactdWake = "mm_compaction_kcompactd_wake"
    /// `[mode, reason]` (``MigrationMode`` and ``MigrateReason`` raw values)
    case migratePagesStart = "mm_migrate_pages_start"
    /// `[nr_succeeded, nr_failed, nr_thp_succeeded, nr_thp_failed, nr_thp_split, nr_split,
    /// mode, reason]`
    case migratePages = "mm_migrate_pages"
    /// `[start_pfn, end_pfn, fin_pfn]`
    case testPagesIsolated = "test_pages_isolated"
  }
  public var kind: Kind
  /// nil for a failed allocation (printed as page=0000000000000000 pfn=0x0).
  public var pfn: PFN?
  public var order: Int
  public var migrateType: Int
  public var gfp: GFP
  public var percpuRefill: Bool
  /// The CPU (pcp set) the event happened on.
  public var cpu: Int
  /// mm_page_alloc_extfrag: the order of the free block found on the fallback list
  /// (`order` is the requested order, `migrateType` the requested type).
  public var fallbackOrder: Int
  /// mm_page_alloc_extfrag: the migratetype of the fallback list.
  public var fallbackMigrateType: Int
  /// mm_page_alloc_extfrag: whether the page's pageblock has the requested type once the
  /// fallback is done (true after a claim, false after a steal).
  public var changeOwnership: Bool
  /// The numbers of a compaction or migration event, as its ``Kind`` case lists them
  /// (empty for the page events).
  public var values: [Int] {
    get { inlineValues.array }
    set { inlineValues = InlineValues(newValue) }
  }
  /// The numbers stored inline: a page event then holds no reference, so building and
  /// delivering one costs no retain, release or value-witness call on the traced paths.
  @usableFromInline var inlineValues: InlineValues

  public init(
    kind: Kind, pfn: PFN?, order: Int, migrateType: Int = 0, gfp: GFP = [], percpuRefill: Bool = false,
    cpu: Int = 0, fallbackOrder: Int = 0, fallbackMigrateType: Int = 0, changeOwnership: Bool = false,
    values: [Int] = []
  ) {
    self.kind = kind
    self.pfn = pfn
    self.order = order
    self.migrateType = migrateType
    self.gfp = gfp
    self.percpuRefill = percpuRefill
    self.cpu = cpu
    self.fallbackOrder = fallbackOrder
    self.fallbackMigrateType = fallbackMigrateType
    self.changeOwnership = changeOwnership
    self.inlineValues = InlineValues(values)
  }

  /// The `page=%p` value: a stable stand-in for the kernel's hashed struct page pointer.
  public var pagePointer: String {
    guard let pfn else { return "0000000000000000" }
    // pfn + 1, and never 0: a zero page= means a failed allocation.
    var x = UInt64(truncatingIfNeeded: pfn.value &+ 1) &* 0x9E37_79B9_7F4A_7C15
    x ^= x >> 29
    let s = String(max(x & 0xFFFF_FFFF, 1), radix: 16)
    return String(repeating: "0", count: 16 - s.count) + s
  }

  /// The event's TP_printk text, e.g. `mm_page_free: page=... pfn=0x1000 order=0`.
  public var formatted: String {
    if let text = compactionText { return "\(kind.rawValue): " + text }
    let pfnText = "0x" + String(pfn?.value ?? 0, radix: 16)
    let head = "\(kind.rawValue): page=\(pagePointer) pfn=\(pfnText)"
    switch kind {
    case .pageAlloc:
      return "\(head) order=\(order) migratetype=\(migrateType) gfp_flags=\(gfp.isEmpty ? "none" : gfp.description)"
    case .pageFree:
      return "\(head) order=\(order)"
    case .pageFreeBatched:
      return "\(head) order=0"
    case .pageAllocZoneLocked:
      return "\(head) order=\(order) migratetype=\(migrateType) percpu_refill=\(percpuRefill ? 1 : 0)"
    case .pagePcpuDrain:
      return "\(head) order=\(order) migratetype=\(migrateType)"
    case .pageAllocExtfrag:
      // fragmenting is computed at print time from the two orders, as the kernel's
      // TP_printk does; pageblock_order is printed as the constant it is.
      return
        "\(head) alloc_order=\(order) fallback_order=\(fallbackOrder) pageblock_order=\(PageGeometry.pageblockOrder) alloc_migratetype=\(migrateType) fallback_migratetype=\(fallbackMigrateType) fragmenting=\(fallbackOrder < PageGeometry.pageblockOrder ? 1 : 0) change_ownership=\(changeOwnership ? 1 : 0)"
    default:
      return head
    }
  }

  /// A whole line of the ftrace `trace` file: `%16s-%-7d [%03d] ..... %5lu.%06lu: ` and
  /// the event, as the kernel's trace_print_context() lays it out.
  public func ftraceLine(task: String = "pagealloc", pid: Int = 1, timestamp: Double) -> String {
    let cpuText = String(cpu)
    let cpuField = "[" + String(repeating: "0", count: max(0, 3 - cpuText.count)) + cpuText + "]"
    let comm = String(repeating: " ", count: max(0, 16 - task.count)) + task
    let pidText = String(pid)
    let pidField = pidText + String(repeating: " ", count: max(0, 7 - pidText.count))
    var ts = fixed(timestamp, 6)
    let secs = ts.prefix { $0 != "." }.count
    if secs < 5 { ts = String(repeating: " ", count: 5 - secs) + ts }
    return "\(comm)-\(pidField) \(cpuField) ..... \(ts): \(formatted)"
  }
}

/// Receives the allocator's trace events. Called on the thread that caused the event,
/// possibly with allocator locks held: it must not call back into the allocator.
public protocol TraceSink: AnyObject, Sendable {
  func record(_ event: TraceEvent)
}

/// A sink that keeps every event in memory.
public final class TraceBuffer: TraceSink, @unchecked Sendable {
  private let events = LockedState<[TraceEvent]>([])
  public init() {}
  public func record(_ event: TraceEvent) { events.withLock { $0.append(event) } }
  /// The events so far.
  public var snapshot: [TraceEvent] { events.withLock { $0 } }
  public func removeAll() { events.withLock { $0.removeAll() } }
}

extension PageAllocator {
  /// Installs (or with nil removes) the trace sink. With no sink the cost of each trace
  /// point is one predictable branch on an atomic flag.
  public func setTraceSink(_ sink: TraceSink?) {
    let observing = traceSinkBox.withLock { box in
      box.sink = sink
      return box.chunkObserver != nil
    }
    tracing.store(sink != nil || observing, ordering: .releasing)
  }

  /// Installs (or with nil removes) an observer called with (pfn, order) for every chunk
  /// the series' chunked free hands to `__free_frozen_pages()`, whatever the pcp does with
  /// it next: how tests see the decomposition itself. It shares the trace points' flag, so
  /// it costs nothing when unset.
  package func setChunkObserver(_ observer: (@Sendable (PFN, Int) -> Void)?) {
    let hasSink = traceSinkBox.withLock { box in
      box.chunkObserver = observer
      return box.sink != nil
    }
    tracing.store(hasSink || observer != nil, ordering: .releasing)
  }

  @usableFromInline @inline(never)
  func emitChunk(_ pfn: Int, _ order: Int) {
    let observer = traceSinkBox.withLock { $0.chunkObserver }
    observer?(PFN(pfn), order)
  }

  @inlinable @inline(__always)
  func traceChunk(_ pfn: Int, _ order: Int) {
    if _slowPath(tracing.load(ordering: .relaxed)) { emitChunk(pfn, order) }
  }

  @usableFromInline @inline(never)
  func emit(_ e: consuming TraceEvent) {
    if e.cpu < 0 { e.cpu = Int(cpa_current_cpu()) % cpuCount }
    let sink = traceSinkBox.withLock { $0.sink }
    sink?.record(e)
  }

  @inlinable @inline(__always)
  func traceZoneLocked(_ pfn: Int, _ order: Int, _ mt: Int) {
    if _slowPath(tracing.load(ordering: .relaxed)) {
      emit(
        TraceEvent(
          kind: .pageAllocZoneLocked, pfn: PFN(pfn), order: order, migrateType: mt,
          percpuRefill: pcpAllowedOrder(order) && mt < MigrateType.pcpTypes, cpu: -1))
    }
  }

  /// mm_page_alloc_extfrag for the block `pfn` a fallback returns; change_ownership reads
  /// the pageblock's type now, as the kernel's TP_fast_assign does.
  @inlinable @inline(__always)
  func traceExtfrag(_ pfn: Int, _ order: Int, _ fallbackOrder: Int, _ startMt: Int, _ fallbackMt: Int) {
    if _slowPath(tracing.load(ordering: .relaxed)) {
      emit(
        TraceEvent(
          kind: .pageAllocExtfrag, pfn: PFN(pfn), order: order, migrateType: startMt, cpu: -1,
          fallbackOrder: fallbackOrder, fallbackMigrateType: fallbackMt,
          changeOwnership: memMap.freeListTypeRaw(pfn) == startMt))
    }
  }

  @inlinable @inline(__always)
  func tracePageFree(_ pfn: Int, _ order: Int) {
    if _slowPath(tracing.load(ordering: .relaxed)) {
      emit(TraceEvent(kind: .pageFree, pfn: PFN(pfn), order: order, cpu: -1))
    }
  }

  /// mm_page_free_batched: the event has no order field (TP_printk prints `order=0`).
  @inlinable @inline(__always)
  func traceFreeBatched(_ pfn: Int) {
    if _slowPath(tracing.load(ordering: .relaxed)) {
      emit(TraceEvent(kind: .pageFreeBatched, pfn: PFN(pfn), order: 0, cpu: -1))
    }
  }

  @inlinable @inline(__always)
  func tracePageAlloc(_ pfn: Int?, _ order: Int, _ mt: Int, _ gfp: GFP) {
    if _slowPath(tracing.load(ordering: .relaxed)) {
      emit(
        TraceEvent(
          kind: .pageAlloc, pfn: pfn.map { PFN($0) }, order: order, migrateType: mt, gfp: gfp, cpu: -1))
    }
  }

  @inlinable @inline(__always)
  func tracePcpuDrain(_ pfn: Int, _ order: Int, _ mt: Int) {
    if _slowPath(tracing.load(ordering: .relaxed)) {
      emit(TraceEvent(kind: .pagePcpuDrain, pfn: PFN(pfn), order: order, migrateType: mt, cpu: -1))
    }
  }
}

/// What the trace points report to: the installed sink and the chunk observer.
struct TraceTargets: Sendable {
  var sink: TraceSink?
  var chunkObserver: (@Sendable (PFN, Int) -> Void)?
}

extension TraceEvent {
  /// At most ``capacity`` numbers (the longest event, mm_migrate_pages, has eight), kept in
  /// the event itself.
  @usableFromInline struct InlineValues: Hashable, Sendable {
    @usableFromInline static let capacity = 8
    @usableFromInline var count: Int
    @usableFromInline var storage: (Int, Int, Int, Int, Int, Int, Int, Int)

    @inlinable @inline(__always) init(_ values: [Int]) {
      precondition(values.count <= Self.capacity, "a trace event carries at most 8 values")
      count = values.count
      storage = (0, 0, 0, 0, 0, 0, 0, 0)
      if values.isEmpty { return }
      withUnsafeMutableBytes(of: &storage) { raw in
        let slots = raw.bindMemory(to: Int.self)
        for (i, v) in values.enumerated() { slots[i] = v }
      }
    }

    @usableFromInline var array: [Int] {
      withUnsafeBytes(of: storage) { Array($0.bindMemory(to: Int.self).prefix(count)) }
    }

    @usableFromInline static func == (l: Self, r: Self) -> Bool { l.array == r.array }
    @usableFromInline func hash(into h: inout Hasher) { h.combine(array) }
  }
}

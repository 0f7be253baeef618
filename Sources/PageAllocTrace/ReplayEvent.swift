import PageAlloc
import _PageAllocUtilities
import Glibc

/// One `mm_page_alloc` / `mm_page_free` line of a kernel trace, or a line that names one
/// of them but does not parse. A detailed parse (``ParsedTrace/detailed``) also records the
/// other kmem events a prediction needs.
@usableFromInline
package struct ReplayEvent {
  @usableFromInline package enum Kind: UInt8 {
    case alloc = 0
    case free = 1
    /// `pfn` holds the index of the reason in ``ParsedTrace/malformedReasons``.
    case malformed = 2
    /// `mm_page_free_batched` (detailed parses only): the commit of a page whose
    /// `mm_page_free` came earlier in the same batch.
    case freeBatched = 3
    /// `mm_page_pcpu_drain` (detailed): `migrateType` is the pageblock's type as the drain
    /// read it.
    case drain = 4
    /// `mm_page_alloc_zone_locked` (detailed): ``ReplayEvent/percpuRefill`` in `aux`.
    case zoneLocked = 5
    /// `mm_page_alloc_extfrag` (detailed): `order` and `migrateType` are alloc_order and
    /// alloc_migratetype; fallback_order, fallback_migratetype and change_ownership are in
    /// `aux` (see ``ReplayEvent/fallbackOrder``).
    case extfrag = 6

    /// The event's name.
    package var eventName: String {
      switch self {
      case .alloc: "mm_page_alloc"
      case .free, .malformed: "mm_page_free"
      case .freeBatched: "mm_page_free_batched"
      case .drain: "mm_page_pcpu_drain"
      case .zoneLocked: "mm_page_alloc_zone_locked"
      case .extfrag: "mm_page_alloc_extfrag"
      }
    }

    /// The event's name after "mm_page_".
    package var eventSuffix: String {
      switch self {
      case .alloc: "alloc"
      case .free, .malformed: "free"
      case .freeBatched: "free_batched"
      case .drain: "pcpu_drain"
      case .zoneLocked: "alloc_zone_locked"
      case .extfrag: "alloc_extfrag"
      }
    }
  }
  /// The pfn (below 2^32 - 2), or for `.malformed` the reason's index.
  @usableFromInline package var pfn32: UInt32
  @usableFromInline package var line: Int32
  @usableFromInline package var cpu: UInt16
  @usableFromInline package var order: UInt8
  @usableFromInline package var kind: Kind
  /// `migratetype=` of an mm_page_alloc line (0...5), or ``ReplayEvent/unknownType``.
  @usableFromInline package var migrateType: UInt8
  /// Per kind: zoneLocked bit 0 = percpu_refill; extfrag: fallback_order in bits 0-3,
  /// fallback_migratetype in bits 4-6, change_ownership in bit 7. 0 otherwise.
  @usableFromInline package var aux: UInt8
  /// Detailed parses: the context the event was traced in, from the ftrace latency field
  /// after the CPU (`..s..`): ``ReplayEvent/task`` (or unknown), softirq, hardirq or NMI.
  @usableFromInline package var context: UInt8

  @usableFromInline package static let task: UInt8 = 0
  @usableFromInline package static let softirq: UInt8 = 1
  @usableFromInline package static let hardirq: UInt8 = 2
  @usableFromInline package static let nmi: UInt8 = 3

  @usableFromInline package static let unknownType: UInt8 = 7

  @inlinable package var pfn: Int { Int(pfn32) }
  /// `percpu_refill=1` of an mm_page_alloc_zone_locked line.
  @inlinable package var percpuRefill: Bool { aux & 1 != 0 }
  /// fallback_order of an mm_page_alloc_extfrag line.
  @inlinable package var fallbackOrder: Int { Int(aux & 0x0F) }
  /// fallback_migratetype of an mm_page_alloc_extfrag line.
  @inlinable package var fallbackType: Int { Int((aux &>> 4) & 0x07) }
  /// change_ownership=1 of an mm_page_alloc_extfrag line.
  @inlinable package var changeOwnership: Bool { aux & 0x80 != 0 }

  @inlinable
  init(
    pfn: Int, line: Int32, cpu: UInt16, order: UInt8, kind: Kind, migrateType: UInt8 = ReplayEvent.unknownType,
    aux: UInt8 = 0, context: UInt8 = 0
  ) {
    pfn32 = UInt32(truncatingIfNeeded: pfn)
    self.line = line
    self.cpu = cpu
    self.order = order
    self.kind = kind
    self.migrateType = migrateType
    self.aux = aux
    self.context = context
  }
}

/// What the parser found in a whole trace.
@usableFromInline
package struct ParsedTrace {
  @usableFromInline package var events: ContiguousArray<ReplayEvent> = []
  @usableFromInline package var malformedReasons: [String] = []
  @usableFromInline package var linesRead = 0
  /// Lines that are not an event we use (headers, other events, mm_page_free_batched...).
  @usableFromInline package var linesIgnored = 0
  /// `mm_page_alloc` lines of failed allocations (page=0, pfn=0).
  @usableFromInline package var allocFailures = 0
  @usableFromInline package var maxCPU = 0
  /// Record every kmem event the parser knows (free_batched, pcpu_drain, zone_locked,
  /// extfrag) and each event's timestamp: what a prediction and a timeline need. A plain
  /// replay leaves it off and counts those lines as ignored.
  package var detailed = false
  /// Detailed parses: the timestamp of each event in nanoseconds, parallel to ``events``
  /// (0 when the line has none).
  package var times: ContiguousArray<UInt64> = []
  /// The `#P:` of the ftrace header (the CPUs the buffer had), if present.
  package var headerCPUs: Int?
  /// The header's `entries-in-buffer/entries-written` (fewer in the buffer than written
  /// means events were overwritten and lost).
  package var entriesInBuffer: Int?
  package var entriesWritten: Int?

  package init(detailed: Bool = false) { self.detailed = detailed }

  @inline(__always)
  mutating func append(_ e: ReplayEvent, time: UInt64) {
    events.append(e)
    if detailed { times.append(time) }
  }
}

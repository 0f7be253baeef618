import CPageAllocShim

// page_owner's public face (mm/page_owner.c): a page's record, its stacks, and the text
// layouts the kernel prints: the /sys/kernel/debug/page_owner record, the lines
// `dump_page_owner()` adds to a bad-page report, and tools/mm/page_owner_sort's summary.

/// Why a page was migrated (`enum migrate_reason`): page_owner's "last migrate reason".
public enum MigrateReason: Int, Sendable, Hashable, CaseIterable, CustomStringConvertible {
  case compaction = 0
  case memoryFailure
  case memoryHotplug
  case syscallOrCpuset
  case mempolicyMbind
  case numaMisplaced
  case contigRange
  case longtermPin
  case demotion
  case damon

  /// The name the kernel prints (include/trace/events/migrate.h).
  public var description: String {
    switch self {
    case .compaction: "compaction"
    case .memoryFailure: "memory_failure"
    case .memoryHotplug: "memory_hotplug"
    case .syscallOrCpuset: "syscall_or_cpuset"
    case .mempolicyMbind: "mempolicy_mbind"
    case .numaMisplaced: "numa_misplaced"
    case .contigRange: "contig_range"
    case .longtermPin: "longterm_pin"
    case .demotion: "demotion"
    case .damon: "damon"
    }
  }
}

/// The thread an allocation or free ran on, as page_owner prints it: `current->pid`
/// (the thread id), `current->tgid` (the process id) and `current->comm` (the thread's
/// name, at most 15 bytes).
public struct PageOwnerTask: Sendable, Hashable {
  public var pid: Int32
  public var tgid: Int32
  public var comm: String

  public init(pid: Int32, tgid: Int32, comm: String) {
    self.pid = pid
    self.tgid = tgid
    self.comm = comm
  }

  init(index: UInt16) {
    if let t = cpa_task_at(index) {
      var k = t.pointee
      pid = k.pid
      tgid = k.tgid
      comm = withUnsafeBytes(of: &k.comm) { raw in
        String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
      }
    } else {
      pid = -1
      tgid = -1
      comm = "?"
    }
  }
}

/// A call stack page_owner recorded: a handle into the process's stack depot, where equal
/// stacks share one handle. The return addresses are captured with a frame-pointer walk
/// (at most 16); they are symbolized only when ``frames`` is read.
public struct PageOwnerStack: Sendable, Hashable {
  /// The depot handle (the kernel's `depot_stack_handle_t`).
  public let handle: UInt32

  public init(handle: UInt32) { self.handle = handle }

  /// The return addresses, innermost first.
  public var returnAddresses: [UInt] {
    var buf = [UInt](repeating: 0, count: Int(CPA_STACK_DEPTH))
    let n = buf.withUnsafeMutableBufferPointer { cpa_depot_fetch(handle, $0.baseAddress, CPA_STACK_DEPTH) }
    return Array(buf.prefix(Int(n)))
  }

  /// One `%pS`-style line per frame: `symbol+0xOFFSET/0xSIZE`, with ` [library]` for a
  /// frame outside the main executable, or the raw address when no symbol covers it.
  /// Swift symbols are demangled.
  public var frames: [String] { returnAddresses.map { Symbolizer.shared.describe($0) } }

  /// The frames as the kernel's `stack_depot_snprint()` prints them: one leading space,
  /// one frame per line.
  public var text: String { frames.map { " " + $0 + "\n" }.joined() }
}

/// One page's page_owner record (`struct page_owner`): the allocation that holds (or last
/// held) the page, and the page's last free.
public struct PageOwnerRecord: Sendable, Hashable, CustomStringConvertible {
  public var pfn: PFN
  /// OWNER_ALLOCATED: the page is allocated now (false: freed since).
  public var isAllocated: Bool
  /// The order of the allocation the page belongs to (0 after `split_page`).
  public var order: Int
  public var gfp: GFP
  /// The thread that allocated it, and when (CLOCK_MONOTONIC nanoseconds: the kernel's
  /// `local_clock()`, time since boot).
  public var task: PageOwnerTask
  public var timestamp: UInt64
  public var allocationStack: PageOwnerStack?
  /// The page's last free (nil when it was never freed since it was first allocated).
  public var freeTask: PageOwnerTask?
  public var freeTimestamp: UInt64?
  public var freeStack: PageOwnerStack?
  public var lastMigrateReason: MigrateReason?
  /// The pageblock's migratetype now, and the page's flags and zone (for the PFN line).
  public var pageblockMigrateType: MigrateType
  public var flags: PageFlags
  public var zone: ZoneKind?

  /// `gfp_migratetype()` of the allocation's flags: the "page type".
  public var migrateType: MigrateType { gfp.migrateType }

  /// The record as one read of `/sys/kernel/debug/page_owner` returns it (print mode
  /// `stack`), ending with an empty line:
  ///
  /// ```
  /// Page allocated via order 0, mask 0xcc0(GFP_KERNEL), pid 7, tgid 7 (worker), ts 81 ns
  /// PFN 0x1000 type Unmovable Block 8 type Movable Flags 0x0(node=0|zone=2)
  ///  Module.allocateBuffers()+0x4c/0x90
  ///  ...
  ///
  /// ```
  public var debugfsText: String {
    var s =
      "Page allocated via order \(order), mask \(PageOwnerRecord.maskText(gfp)), pid \(task.pid), "
      + "tgid \(task.tgid) (\(task.comm)), ts \(timestamp) ns\n"
    s +=
      "PFN 0x\(String(pfn.value, radix: 16)) type \(migrateType) Block \(pfn.value >> PageGeometry.pageblockOrder) "
      + "type \(pageblockMigrateType) Flags \(flagsText)\n"
    s += allocationStack?.text ?? ""
    if let r = lastMigrateReason { s += "Page has been migrated, last migrate reason: \(r)\n" }
    return s + "\n"
  }

  /// `__dump_page_owner()`'s lines, as a bad-page report prints them.
  public var dumpLines: [String] {
    var out = [isAllocated ? "page_owner tracks the page as allocated" : "page_owner tracks the page as freed"]
    out.append(
      "page last allocated via order \(order), migratetype \(migrateType), gfp_mask "
        + "\(PageOwnerRecord.maskText(gfp)), pid \(task.pid), tgid \(task.tgid) (\(task.comm)), ts \(timestamp)")
    if let st = allocationStack {
      out += st.frames.map { " " + $0 }
    } else {
      out.append("page_owner allocation stack trace missing")
    }
    let ft = freeTask ?? PageOwnerTask(pid: 0, tgid: 0, comm: "")
    out.append("page last free pid \(ft.pid) tgid \(ft.tgid) ts \(freeTimestamp ?? 0) stack trace:")
    if let st = freeStack {
      out += st.frames.map { " " + $0 }
    } else {
      out.append("page_owner free stack trace missing")
    }
    if let r = lastMigrateReason { out.append("page has been migrated, last migrate reason: \(r)") }
    return out
  }

  public var description: String { dumpLines.joined(separator: "\n") }

  /// `%#x(%pGg)`: `0` and the names, or the hex mask and the names.
  static func maskText(_ gfp: GFP) -> String {
    gfp.isEmpty ? "0(none)" : "0x\(String(gfp.rawValue, radix: 16))(\(gfp))"
  }

  /// `%pGp`: the flag word, then the set flags' names and the zone.
  var flagsText: String {
    let names: [(PageFlags, String)] = [
      (.locked, "locked"), (.writeback, "writeback"), (.reserved, "reserved"), (.lru, "lru"),
      (.active, "active"), (.private, "private"), (.unevictable, "unevictable"), (.mlocked, "mlocked"),
      (.hwpoison, "hwpoison"),
    ]
    var parts = names.filter { flags.contains($0.0) }.map(\.1)
    parts.append("node=0")
    if let zone { parts.append("zone=\(zone.rawValue)") }
    return "0x\(String(flags.rawValue, radix: 16))(\(parts.joined(separator: "|")))"
  }
}

/// A group of live allocations made from one call stack.
public struct PageOwnerStackGroup: Sendable, Hashable {
  /// The allocation stack (nil: none was recorded).
  public var stack: PageOwnerStack?
  /// How many allocations ("times").
  public var allocations: Int
  /// How many pages they hold.
  public var pages: Int
  /// The head pfn of each allocation, ascending.
  public var heads: [PFN]
  /// The threads that made them.
  public var tasks: [PageOwnerTask]
}

/// The allocations still live, grouped by allocation stack, most pages first: what
/// ``PageAllocator/leakReport()`` returns at a point where every page should be back.
public struct LeakReport: Sendable, CustomStringConvertible {
  public var groups: [PageOwnerStackGroup]

  /// Pages held by all groups.
  public var pages: Int { groups.reduce(0) { $0 + $1.pages } }
  /// Allocations in all groups.
  public var allocations: Int { groups.reduce(0) { $0 + $1.allocations } }
  public var isEmpty: Bool { groups.isEmpty }

  /// The report: a summary line, then per stack its pages, allocations, first pfns and
  /// threads, and the stack.
  ///
  /// ```
  /// pagealloc: 3 pages in 2 allocations still held, from 1 stack
  /// 3 pages in 2 allocations (pfn 0x1000 0x1002), pid 7 tgid 7 (worker):
  ///  Module.allocateBuffers()+0x4c/0x90
  ///  ...
  ///
  /// ```
  public var description: String {
    if groups.isEmpty { return "pagealloc: no page is held\n" }
    var s =
      "pagealloc: \(pages) page\(pages == 1 ? "" : "s") in \(allocations) allocation\(allocations == 1 ? "" : "s")"
      + " still held, from \(groups.count) stack\(groups.count == 1 ? "" : "s")\n"
    for g in groups {
      let shown = g.heads.prefix(8).map { "0x" + String($0.value, radix: 16) }.joined(separator: " ")
      let more = g.heads.count > 8 ? " ..." : ""
      let tasks = Set(g.tasks).sorted { ($0.pid, $0.comm) < ($1.pid, $1.comm) }.prefix(4)
        .map { "pid \($0.pid) tgid \($0.tgid) (\($0.comm))" }.joined(separator: ", ")
      s += "\(g.pages) page\(g.pages == 1 ? "" : "s") in \(g.allocations) allocation"
      s += "\(g.allocations == 1 ? "" : "s") (pfn \(shown)\(more)), \(tasks):\n"
      s += g.stack?.text ?? " (no stack recorded)\n"
      s += "\n"
    }
    return s
  }
}

/// What page poisoning found in a page written after its free.
public struct PoisonCorruption: Sendable, Hashable {
  /// The first and last byte offsets in the page that lost the poison value.
  public var firstOffset: Int
  public var lastOffset: Int
  /// One byte changed in one bit ("pagealloc: single bit error").
  public var singleBitError: Bool
  /// `print_hex_dump()` of the changed bytes, 16 per row with their address and ASCII (at
  /// most 32 rows kept).
  public var hexDump: [String]
  /// `dump_stack()`: the allocation that found the corruption.
  public var callTrace: PageOwnerStack?

  static let maxRows = 32

  static func hexDump(_ page: UnsafeRawPointer, from first: Int, through last: Int) -> [String] {
    var rows: [String] = []
    var off = first
    while off <= last {
      if rows.count == maxRows {
        rows.append("(\((last - off) / 16 + 1) more rows)")
        break
      }
      let n = min(16, last - off + 1)
      var hex: [String] = []
      var ascii = ""
      for i in 0..<n {
        let b = page.load(fromByteOffset: off + i, as: UInt8.self)
        let h = String(b, radix: 16)
        hex.append(h.count == 1 ? "0" + h : h)
        ascii.append(b >= 0x20 && b < 0x7f ? Character(Unicode.Scalar(b)) : ".")
      }
      var line = hex.joined(separator: " ")
      line += String(repeating: " ", count: 16 * 3 - 1 - line.count)
      let addr = String(UInt(bitPattern: page + off), radix: 16)
      rows.append(String(repeating: "0", count: max(0, 16 - addr.count)) + addr + ": " + line + "  " + ascii)
      off += 16
    }
    return rows
  }
}

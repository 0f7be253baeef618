internal import _PageAllocUtilities
import Synchronization

// Reports: `bad_page()` for bad pages and bad frees (with the quarantine that replaces
// the kernel's leak), `warn_alloc()` for failed allocations.

/// A bad page or bad free, reported like the kernel's `bad_page()`.
public struct BadPageReport: Sendable, Hashable, CustomStringConvertible {
  public enum Kind: String, Sendable, Hashable {
    /// The page is free already (on a free list or a pcp list, or inside a free block).
    case doubleFree = "double free"
    /// A reference dropped from a page whose count was already zero.
    case refcountUnderflow = "refcount underflow"
    /// The pfn is outside every zone or in a memmap hole.
    case outsideZones = "pfn outside every zone"
    /// `freePages`/`freeFrozenPages` with an order other than the allocation's.
    case wrongOrder = "wrong order"
    /// A compound head passed to `freeContigRange`, or a compound page freed as order 0.
    case compound = "compound page"
    /// free_page_is_bad(): the page's state forbids freeing it.
    case badState = "bad page state"
    /// A frozen free of a page with a nonzero refcount.
    case nonzeroRefcount = "nonzero refcount"
    /// `getPage` on a page whose refcount is zero.
    case getOnFreePage = "get_page on a free page"
    /// Page poisoning found a changed byte in a free page.
    case poisonCorrupted = "poison corrupted"
    /// The page was quarantined already.
    case quarantined = "quarantined page"
  }

  public var pfn: PFN
  public var kind: Kind
  /// The kernel's reason string ("nonzero _refcount", "nonzero mapcount", ...).
  public var reason: String
  /// The API call that found it.
  public var operation: String
  /// Whether the page was put in quarantine (kept off every list for good).
  public var quarantined: Bool
  /// The page's page_owner record when the report was made (page_owner on): who allocated
  /// the page and, for a double free, who freed it first.
  public var owner: PageOwnerRecord?
  /// For ``Kind/poisonCorrupted``: where the poison was overwritten.
  public var corruption: PoisonCorruption?

  public var description: String {
    let hex = String(pfn.value, radix: 16)
    let pfnText = String(repeating: "0", count: max(0, 5 - hex.count)) + hex
    return "BUG: Bad page state in process pagealloc  pfn:\(pfnText) (\(operation): \(reason)"
      + (quarantined ? ", quarantined)" : ")")
  }

  /// The whole report, as the kernel prints it: for a bad page, the `bad_page()` line
  /// (``description``), `page dumped because:` and `dump_page_owner()`'s lines; for a
  /// poisoned page, `check_poison_mem()`'s line and hex dump, then the page dump with the
  /// page_owner lines.
  public var fullText: String {
    var lines: [String]
    var because = reason
    if let c = corruption {
      lines = [reason] + c.hexDump
      if let t = c.callTrace { lines += ["Call Trace:"] + t.frames.map { " " + $0 } }
      lines.append("page: pfn:0x\(String(pfn.value, radix: 16)) (\(operation))")
      because = "pagealloc: corrupted page details"
    } else {
      lines = [description]
    }
    lines.append("page dumped because: \(because)")
    if let owner { lines += owner.dumpLines }
    return lines.joined(separator: "\n")
  }
}

struct ReportLog {
  var reports: [BadPageReport] = []
  var total = 0
  var byKind: [BadPageReport.Kind: Int] = [:]
  var allocFailures = 0
  var lastAllocFailure: String?
  static let keep = 4096
}

extension PageAllocator {
  /// Bad-page and bad-free reports so far (the last 4096).
  public var badPageReports: [BadPageReport] { reports.withLock { $0.reports } }

  /// How many bad pages and bad frees were reported.
  public var badPageCount: Int { reports.withLock { $0.total } }

  /// Reports by kind.
  public var badPageCountsByKind: [BadPageReport.Kind: Int] { reports.withLock { $0.byKind } }

  /// Pages kept off every list after a bad-page report (including hardware-poisoned
  /// pages).
  public var quarantinedPageCount: Int { quarantined.load(ordering: .relaxed) }

  /// Hardware-poisoned pages taken out of use at free time (part of the quarantine).
  public var hwpoisonedPageCount: Int { hwpoisoned.load(ordering: .relaxed) }

  /// Pages freed while mlocked (the kernel's UNEVICTABLE_PGCLEARED event): the flag is
  /// cleared and the page freed, not reported.
  public var mlockedPagesCleared: Int { mlockCleared.load(ordering: .relaxed) }

  /// Allocations that failed (returned nil).
  public var allocationFailureCount: Int { reports.withLock { $0.allocFailures } }

  /// The last warn_alloc report.
  public var lastAllocationFailure: String? { reports.withLock { $0.lastAllocFailure } }

  /// Clears the report log and counters (not the quarantine).
  public func clearBadPageReports() {
    reports.withLock { $0 = ReportLog() }
  }

  @usableFromInline @inline(never)
  func reportBad(
    _ pfn: Int, _ kind: BadPageReport.Kind, _ reason: String, _ op: String, quarantine: Bool,
    corruption: PoisonCorruption? = nil
  ) {
    // dump_page_owner(): the page's record as the bad free found it.
    let owner = debug.owner.flatMap { t in memMap.record(pfn) != nil ? ownerSnapshot(t, pfn) : nil }
    if quarantine, let r = memMap.record(pfn) {
      // Only a page that is not already free or quarantined is taken out.
      let w = r.pointee.flags.load(ordering: .relaxed)
      if w & (PG.freeMask | PG.quarantined) == 0 {
        r.pointee.flags.store(
          PG.quarantined | (w & PG.flagMask & ~(PG.head | PG.tail | PG.tailsTouched)), ordering: .relaxed)
        quarantined.wrappingAdd(1, ordering: .relaxed)
      }
    }
    let report = BadPageReport(
      pfn: PFN(pfn), kind: kind, reason: reason, operation: op, quarantined: quarantine, owner: owner,
      corruption: corruption)
    reports.withLock {
      $0.total += 1
      $0.byKind[kind, default: 0] += 1
      if $0.reports.count < ReportLog.keep { $0.reports.append(report) }
    }
    if configuration.printReports {
      printError(owner == nil && corruption == nil ? report.description : report.fullText)
    }
    if trapOnBad { fatalError(report.fullText) }
  }

  /// `injected`: the failure came from fault injection; noted for the calling thread so
  /// ``allocate(order:gfp:)`` can say why it failed (AllocationFailure.swift).
  @usableFromInline @inline(never)
  func reportAllocFailure(_ order: Int, _ gfp: GFP, injected: Bool = false) {
    AllocationFailureNote.record(injected: injected)
    let msg =
      "pagealloc: page allocation failure: order:\(order), mode:0x\(String(gfp.rawValue, radix: 16))(\(gfp)), nodemask=(null)"
    reports.withLock {
      $0.allocFailures += 1
      if !gfp.contains(.noWarn) { $0.lastAllocFailure = msg }
    }
    if configuration.printReports && !gfp.contains(.noWarn) { printError(msg) }
  }
}

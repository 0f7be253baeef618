internal import _PageAllocUtilities
import Synchronization

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

  public var description: String {
    let hex = String(pfn.value, radix: 16)
    let pfnText = String(repeating: "0", count: max(0, 5 - hex.count)) + hex
    return "BUG: Bad page state in process pagealloc  pfn:\(pfnText) (\(operation): \(reason)"
      + (quarantined ? ", quarantined)" : ")")
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

/// Allocation-failure fault injection: the kernel's fail_page_alloc
/// (`mm/fail_page_alloc.c` over `lib/fault-inject.c`'s `should_fail_ex()`).
///
/// The checks run in the kernel's order on every allocation (`allocPages`, each page of
/// `allocPagesBulk`, pcp or buddy alike):
/// 1. `probability == 0`: never fail (nothing is counted);
/// 2. the `should_fail_alloc_page()` filters: `order < minOrder`, `.noFail`,
///    ``ignoreHighmem`` with `__GFP_HIGHMEM`, ``ignoreDirectReclaim`` with
///    `__GFP_DIRECT_RECLAIM`, and this project's ``ignoreNoWarn`` with `.noWarn`;
/// 3. ``times`` used up: never fail again;
/// 4. ``space``: while the budget lasts, `2^order` pages are taken from it and the call
///    does not fail;
/// 5. ``interval``: only every `interval`-th call that got this far may fail;
/// 6. fail with ``probability`` percent (a seeded xorshift64* stands in for
///    `get_random_u32_below(100)`, so a failing run reproduces from its ``seed``).
///
/// Defaults differ from the kernel's debugfs defaults (min-order 1, ignore-gfp-wait Y,
/// ignore-gfp-highmem Y): here every filter is off unless asked for.
public struct FaultInjection: Sendable, Hashable {
  /// Percent chance (0...100) that an eligible allocation fails.
  public var probability: Int
  /// Only every `interval`-th eligible allocation may fail (1: all).
  public var interval: Int
  /// Fail at most this many times (-1: no limit).
  public var times: Int
  /// Only orders at or above this fail (`min-order`).
  public var minOrder: Int
  /// Do not fail `.noWarn` allocations (a PageAlloc filter; the kernel only stops the
  /// report for them). vmalloc's high-order attempts carry `.noWarn`.
  public var ignoreNoWarn: Bool
  /// Do not fail `__GFP_HIGHMEM` allocations (`ignore-gfp-highmem`): `.highUserMovable`
  /// and every other request with `.highmem`.
  public var ignoreHighmem: Bool
  /// Do not fail allocations that may sleep, `__GFP_DIRECT_RECLAIM` (`ignore-gfp-wait`).
  public var ignoreDirectReclaim: Bool
  /// Initial budget in pages (`space`): failures are suppressed until this many pages
  /// have been asked for.
  public var space: Int
  /// Seed of the deterministic random sequence.
  public var seed: UInt64

  /// The older name of ``ignoreHighmem``.
  public var ignoreHighUserMovable: Bool {
    get { ignoreHighmem }
    set { ignoreHighmem = newValue }
  }

  public init(
    probability: Int, interval: Int = 1, times: Int = -1, minOrder: Int = 0,
    ignoreNoWarn: Bool = false, ignoreHighUserMovable: Bool = false,
    ignoreDirectReclaim: Bool = false, space: Int = 0, seed: UInt64 = 1
  ) {
    self.probability = min(max(probability, 0), 100)
    self.interval = max(interval, 1)
    self.times = times
    self.minOrder = minOrder
    self.ignoreNoWarn = ignoreNoWarn
    self.ignoreHighmem = ignoreHighUserMovable
    self.ignoreDirectReclaim = ignoreDirectReclaim
    self.space = max(space, 0)
    self.seed = seed
  }

  var state: UInt64 = 0
  var count: Int = 0
  /// Failures injected so far.
  public internal(set) var injected: Int = 0

  mutating func shouldFail(order: Int, gfp: GFP) -> Bool {
    if probability == 0 { return false }
    if order < minOrder { return false }
    if gfp.contains(.noFail) { return false }
    if ignoreHighmem && gfp.contains(.highmem) { return false }
    if ignoreDirectReclaim && gfp.contains(.directReclaim) { return false }
    if ignoreNoWarn && gfp.contains(.noWarn) { return false }
    if times >= 0 && injected >= times { return false }
    if space > 0 {
      // lib/fault-inject.c: `if (space > size) { space -= size; return false; }`
      let size = 1 << order
      if space > size {
        space -= size
        return false
      }
    }
    count += 1
    if count % interval != 0 { return false }
    if state == 0 { state = seed | 1 }
    // xorshift64*
    state ^= state >> 12
    state ^= state << 25
    state ^= state >> 27
    let r = (state &* 0x2545_F491_4F6C_DD1D) >> 33
    if Int(r % 100) < probability {
      injected += 1
      return true
    }
    return false
  }
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

  /// Allocations that failed (returned nil).
  public var allocationFailureCount: Int { reports.withLock { $0.allocFailures } }

  /// The last warn_alloc report.
  public var lastAllocationFailure: String? { reports.withLock { $0.lastAllocFailure } }

  /// Clears the report log and counters (not the quarantine).
  public func clearBadPageReports() {
    reports.withLock { $0 = ReportLog() }
  }

  @usableFromInline @inline(never)
  func reportBad(_ pfn: Int, _ kind: BadPageReport.Kind, _ reason: String, _ op: String, quarantine: Bool) {
    if quarantine, let r = memMap.record(pfn) {
      // Only a page that is not already free or quarantined is taken out.
      let w = r.pointee.flags.load(ordering: .relaxed)
      if w & (PG.freeMask | PG.quarantined) == 0 {
        r.pointee.flags.store(PG.quarantined | (w & PG.flagMask & ~(PG.head | PG.tail)), ordering: .relaxed)
        quarantined.wrappingAdd(1, ordering: .relaxed)
      }
    }
    let report = BadPageReport(pfn: PFN(pfn), kind: kind, reason: reason, operation: op, quarantined: quarantine)
    reports.withLock {
      $0.total += 1
      $0.byKind[kind, default: 0] += 1
      if $0.reports.count < ReportLog.keep { $0.reports.append(report) }
    }
    if configuration.printReports { printError(report.description) }
    if trapOnBad { fatalError(report.description) }
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

  /// Installs (or with nil removes) fault injection.
  public func setFaultInjection(_ f: FaultInjection?) {
    faultState.withLock { $0 = f }
    faultsEnabled.store(f != nil, ordering: .releasing)
  }

  /// The fault injection state, with its count of injected failures.
  public var faultInjection: FaultInjection? { faultState.withLock { $0 } }

  @usableFromInline @inline(never)
  func shouldInjectFailure(_ order: Int, _ gfp: GFP) -> Bool {
    faultState.withLock { f in
      guard var s = f else { return false }
      let r = s.shouldFail(order: order, gfp: gfp)
      f = s
      return r
    }
  }
}

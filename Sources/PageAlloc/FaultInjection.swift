internal import _PageAllocUtilities
import Synchronization

// Allocation-failure fault injection: `mm/fail_page_alloc.c`'s `should_fail_alloc_page()`
// over `lib/fault-inject.c`'s `should_fail_ex()`.

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

  /// ``ignoreHighmem`` under the name callers used first; kept so they still compile.
  @available(*, deprecated, renamed: "ignoreHighmem")
  public var ignoreHighUserMovable: Bool {
    get { ignoreHighmem }
    set { ignoreHighmem = newValue }
  }

  public init(
    probability: Int, interval: Int = 1, times: Int = -1, minOrder: Int = 0,
    ignoreNoWarn: Bool = false, ignoreHighmem: Bool = false,
    ignoreDirectReclaim: Bool = false, space: Int = 0, seed: UInt64 = 1
  ) {
    self.probability = min(max(probability, 0), 100)
    self.interval = max(interval, 1)
    self.times = times
    self.minOrder = minOrder
    self.ignoreNoWarn = ignoreNoWarn
    self.ignoreHighmem = ignoreHighmem
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

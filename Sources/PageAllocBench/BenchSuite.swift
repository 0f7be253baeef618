@_spi(Benchmark) import PageAlloc
import _PageAllocUtilities
import PageAllocVMalloc

/// What every suite of `pagealloc bench` is given: iteration counts, the order, threads,
/// and a progress callback.
public struct BenchOptions: Sendable {
  /// Iterations for every selected suite; nil means each suite's own default
  /// (``BenchSuite/defaultIterations``, or ``BenchSuite/quickIterations`` with ``quick``).
  public var iterations: Int?
  /// The order of the high-order and floor suites (the patch's test uses pageblock order 9).
  public var order: Int
  /// Runs the high-order and floor suites for every order 0...MAX_PAGE_ORDER.
  public var allOrders: Bool
  /// Threads of the multi-threaded order-0 variant.
  public var threads: Int
  /// Small iteration counts (CI): the whole run stays well under 20 s.
  public var quick: Bool
  /// Called now and then with a label and the fraction done (0...1) of the running suite.
  public var progress: (@Sendable (_ label: String, _ fraction: Double) -> Void)?
  /// A deliberately broken run (tests, and `pagealloc bench --sabotage`): every suite's
  /// result check must then throw.
  package var sabotage: BenchSabotage?

  public init(
    iterations: Int? = nil, order: Int = 9, allOrders: Bool = false, threads: Int = 2, quick: Bool = false,
    progress: (@Sendable (String, Double) -> Void)? = nil
  ) {
    self.iterations = iterations
    self.order = order
    self.allOrders = allOrders
    self.threads = threads
    self.quick = quick
    self.progress = progress
  }

  /// The orders a per-order suite runs: all of them, or ``order``.
  public var orders: [Int] { allOrders ? Array(0...PageGeometry.maxOrder) : [order] }

  /// The iteration count for `suite`.
  public func iterations(for suite: BenchSuite) -> Int {
    iterations ?? (quick ? suite.quickIterations : suite.defaultIterations)
  }

  func report(_ label: String, _ fraction: Double) { progress?(label, fraction) }
}

/// A benchmark could not produce a trustworthy figure: the path under test left the
/// allocator in a wrong state, or an allocation it needed failed. A suite throws this
/// instead of reporting a figure.
public struct BenchError: Error, CustomStringConvertible, Sendable {
  public var suite: String
  public var message: String
  public init(suite: String, _ message: String) {
    self.suite = suite
    self.message = message
  }
  public var description: String { "bench \(suite): \(message)" }
}

/// One suite of `pagealloc bench`: a name, what it measures, and its kernel.
///
/// The kernel calls the allocator's `@inlinable` entry points (so its hot loops are
/// specialised and inlined with the allocator), returns its figures as ``BenchResult``
/// values, and must check its own result before returning: every page back
/// (`PageAllocator.freePageCount`), `PageAllocator.verify()` clean, no bad-page report.
/// ``ratios`` turns its results into the named ratios of the JSON output.
public struct BenchSuite: Sendable {
  public let name: String
  public let summary: String
  public let defaultIterations: Int
  public let quickIterations: Int
  /// What one iteration is, for the help text ("iterations of alloc+split+free").
  public let iterationUnit: String
  public let run: @Sendable (BenchOptions) throws -> [BenchResult]
  public let ratios: @Sendable ([BenchResult]) -> [(String, Double)]

  public init(
    name: String, summary: String, defaultIterations: Int, quickIterations: Int, iterationUnit: String,
    run: @escaping @Sendable (BenchOptions) throws -> [BenchResult],
    ratios: @escaping @Sendable ([BenchResult]) -> [(String, Double)] = { _ in [] }
  ) {
    self.name = name
    self.summary = summary
    self.defaultIterations = defaultIterations
    self.quickIterations = quickIterations
    self.iterationUnit = iterationUnit
    self.run = run
    self.ratios = ratios
  }
}

/// The suites `pagealloc bench` knows, in the order a full run runs them.
///
/// Adding a suite is one line here plus its own file defining a `static let` on
/// ``BenchSuite`` (see `HighOrderBench.swift`).
public enum BenchRegistry {
  public static let suites: [BenchSuite] = [
    .highOrder,
    .floor,
    .frozenRange,
    .order0,
    .thp,
    .bulk,
    .cma,
    .traceOverhead,
    .debug,
    .vmalloc,
    .compaction,
  ]

  /// The suite called `name`, or nil.
  public static func suite(named name: String) -> BenchSuite? {
    suites.first { $0.name == name }
  }

  /// Every ratio the given results support, from each suite's ``BenchSuite/ratios``.
  public static func ratios(for results: [BenchResult]) -> [(String, Double)] {
    var out: [(String, Double)] = []
    for s in suites {
      let mine = results.filter { $0.suite == s.name }
      if !mine.isEmpty { out += s.ratios(results) }
    }
    return out
  }
}

// MARK: - Checks shared by the suites

/// A fresh allocator for one suite: one Normal zone of `pages` pages, metadata only (the
/// suites measure the page allocator, not memory traffic).
func benchAllocator(_ suite: String, pages: Int = 1 << 16, cpuCount: Int = 2) throws -> PageAllocator {
  do {
    return try PageAllocator(
      configuration: .init(
        zones: [ZoneConfiguration(kind: .normal, pfns: PFN(0)..<PFN(pages))], cpuCount: cpuCount,
        backing: .none, sectionPages: 1 << 15, printReports: false))
  } catch {
    throw BenchError(suite: suite, "cannot create the allocator: \(error)")
  }
}

/// A deliberate fault for a run whose result check must fail: how the tests (and the
/// hidden `pagealloc bench --sabotage`) show that every suite checks its result, and that
/// a failed check makes the command exit with status 2.
package enum BenchSabotage: String, Sendable, CaseIterable {
  /// One page allocated and never freed.
  case leakPage = "leak-page"
  /// One page freed twice (a bad-page report).
  case badFree = "bad-free"

  /// Damages `a` just before a suite's result check.
  func apply(_ a: PageAllocator) {
    guard let p = a.allocPages(order: 0, gfp: [.kernel, .noWarn]) else { return }
    if self == .badFree {
      a.freePages(p, order: 0)
      a.freePages(p, order: 0)
    }
  }
}

/// A suite's result check: ``benchCheckRestored(_:startFree:suite:variant:)`` after the
/// sabotage `o` asks for, if any.
func benchCheck(_ a: PageAllocator, startFree: Int, suite: String, variant: String, _ o: BenchOptions) throws {
  o.sabotage?.apply(a)
  try benchCheckRestored(a, startFree: startFree, suite: suite, variant: variant)
}

/// The check every suite runs before its figure counts: the free page count is back to
/// `startFree`, no bad page was reported, and `PageAllocator.verify()` passes.
public func benchCheckRestored(_ a: PageAllocator, startFree: Int, suite: String, variant: String) throws {
  let free = a.freePageCount
  if free != startFree {
    throw BenchError(
      suite: suite, "\(variant): \(free) pages free after the run, \(startFree) before: pages lost or freed twice")
  }
  if a.badPageCount != 0 {
    let r = a.badPageReports.first.map { " (first: \($0))" } ?? ""
    throw BenchError(suite: suite, "\(variant): \(a.badPageCount) bad-page report(s)\(r)")
  }
  do {
    try a.verify()
  } catch {
    throw BenchError(suite: suite, "\(variant): \(error)")
  }
}

/// An allocation the benchmark needs failed: a broken path, never a figure.
@usableFromInline @inline(never)
func benchAllocFailed(_ suite: String, _ order: Int) -> BenchError {
  BenchError(suite: suite, "allocation of order \(order) failed")
}

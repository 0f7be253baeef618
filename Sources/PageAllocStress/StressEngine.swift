import PageAlloc
import _PageAllocUtilities
import PageAllocVMalloc
import CPageAllocShim
import Synchronization

/// What `pagealloc stress` runs.
public struct StressConfiguration: Sendable {
  /// Worker threads. Worker `i` uses per-CPU page set `i % cpuCount` (pinned through the
  /// CPU override, so a single-thread run does not depend on the scheduler).
  public var threads: Int
  /// Stop after this many seconds (nil: no time limit).
  public var seconds: Double?
  /// Stop after this many operations in total, split over the workers (nil: no limit).
  /// At least one of `seconds` and `operations` must be set.
  public var operations: Int?
  public var seed: UInt64
  /// Fraction (0...1) of operations that are deliberate bad frees (double frees, wrong
  /// orders, foreign pfns, compound heads), each run while the other workers are paused
  /// so that it can never hit another worker's page.
  public var badFreeRate: Double
  /// Injected allocation failures (fail_page_alloc), percent of allocations (0: off).
  public var faultPercent: Int
  /// Worker 0 runs `PageAllocator.verify()` (with every worker paused) every this many
  /// of its operations; 0: only at the end.
  public var verifyEvery: Int
  /// Pages of memory: a 4096-page DMA zone, the rest Normal, with a one-section hole in the
  /// middle (sections of 4096 pages).
  public var pages: Int
  /// The memory behind the pages; nil: `.none` unless an extension needs more (vmalloc
  /// needs `.memfd`, reserved with `MAP_NORESERVE`: only the pages it touches cost memory).
  public var backing: Backing?
  /// Workloads from other modules (the vmalloc hook).
  public var extensions: [any StressExtension]
  /// Runs with page_owner on: the summary then has the page_owner_sort summary of the
  /// pages held when the workers stopped, and the leak report after they gave everything
  /// back.
  public var pageOwner: Bool = false

  public init(
    threads: Int = 1, seconds: Double? = nil, operations: Int? = nil, seed: UInt64 = 1,
    badFreeRate: Double = 0, faultPercent: Int = 1, verifyEvery: Int = 100_000, pages: Int = 1 << 16,
    extensions: [any StressExtension] = [], backing: Backing? = nil
  ) {
    self.threads = threads
    self.seconds = seconds
    self.operations = operations
    self.seed = seed
    self.badFreeRate = badFreeRate
    self.faultPercent = faultPercent
    self.verifyEvery = verifyEvery
    self.pages = pages
    self.extensions = extensions
    self.backing = backing
  }

  /// The allocator configuration the engine builds: with every page of a block checked on
  /// free and allocation (`checkPages`), as the kernel's debug configurations do.
  public var allocatorConfiguration: PageAllocator.Configuration {
    let hole = (pages / 2) & ~4095
    return PageAllocator.Configuration(
      zones: [
        ZoneConfiguration(kind: .dma, pfns: PFN(0)..<PFN(4096)),
        ZoneConfiguration(kind: .normal, pfns: PFN(4096)..<PFN(pages)),
      ], cpuCount: max(threads, 2),
      backing: backing ?? extensions.lazy.compactMap(\.requiredBacking).first ?? .none, sectionPages: 4096,
      holes: pages >= 16384 ? [PFN(hole)..<PFN(hole + 4096)] : [], pageOwner: pageOwner, checkPages: true)
  }
}

/// The result of a stress run.
public struct StressSummary: Sendable, CustomStringConvertible {
  public var threads: Int
  public var seed: UInt64
  /// Operations done (each API call sequence the engine picks counts once).
  public var operations: Int
  public var operationsByKind: [String: Int]
  public var elapsedNanoseconds: UInt64
  /// Allocations that returned nil (injected failures included).
  public var allocationFailures: Int
  /// Failures injected by fault injection.
  public var failuresInjected: Int
  /// `allocContigRange` calls that threw busy (expected: no migration).
  public var contigBusy: Int
  public var verifications: Int
  /// Deliberate bad frees performed, and how many of them produced a report.
  public var badFreesInjected: Int
  public var badFreesCaught: Int
  /// Reports produced by the deliberate bad frees (one per bad free when all is well).
  public var badFreeReports: Int
  public var badFreesByKind: [String: Int]
  /// `PageAllocator.badPageCount` at the end.
  public var badPages: Int
  /// Reports not explained by a deliberate bad free (0 for a sound allocator).
  public var unexpectedBadPages: Int
  public var quarantinedPages: Int
  /// Managed pages neither free nor quarantined after every worker freed what it held.
  public var pagesLeaked: Int
  /// A hash of the free state (buddy and pcp blocks) before the final cleanup.
  public var stateChecksum: UInt64
  /// The first verification failure, if any.
  public var verifyError: String?
  /// What each extension reported (its failures fail the run).
  public var extensionReports: [StressExtensionReport] = []
  /// With page_owner: `page_owner_sort --cull=stacktrace` of the pages held when the
  /// workers stopped, and the leak report after they gave everything back (quarantined
  /// pages stay held, as the kernel leaks them).
  public var pageOwnerSummary: String?
  public var leakReport: LeakReport?

  public var opsPerSecond: Double {
    elapsedNanoseconds > 0 ? Double(operations) * 1e9 / Double(elapsedNanoseconds) : 0
  }

  /// Whether the run found no problem.
  public var passed: Bool {
    verifyError == nil && unexpectedBadPages == 0 && pagesLeaked == 0 && badFreesCaught == badFreesInjected
      && badFreeReports == badFreesInjected && extensionReports.allSatisfy(\.failures.isEmpty)
  }

  /// Everything but the timing: equal for two single-thread runs with the same seed.
  public var deterministicFields: [String] {
    [
      "\(threads)", "\(seed)", "\(operations)", "\(operationsByKind.sorted { $0.key < $1.key })",
      "\(allocationFailures)", "\(failuresInjected)", "\(contigBusy)", "\(verifications)",
      "\(badFreesInjected)", "\(badFreesCaught)", "\(badFreeReports)", "\(badFreesByKind.sorted { $0.key < $1.key })",
      "\(badPages)",
      "\(quarantinedPages)", "\(pagesLeaked)", "\(stateChecksum)",
    ] + extensionReports.map(\.formatted)
  }

  public var description: String {
    var s = ""
    s += "threads \(threads)  seed \(seed)\n"
    s += "operations \(operations) in \(fixed(Double(elapsedNanoseconds) / 1e9, 2)) s: \(Int(opsPerSecond)) ops/s\n"
    s +=
      "  " + operationsByKind.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ") + "\n"
    s += "allocation failures \(allocationFailures) (injected \(failuresInjected)), contig busy \(contigBusy)\n"
    s += "verifications \(verifications): \(verifyError ?? "ok")\n"
    s += "bad frees injected \(badFreesInjected), caught \(badFreesCaught), reports \(badFreeReports)"
    if !badFreesByKind.isEmpty {
      s +=
        " (" + badFreesByKind.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ") + ")"
    }
    s += "\n"
    s += "bad pages \(badPages) (unexpected \(unexpectedBadPages)), quarantined \(quarantinedPages)\n"
    s += "pages leaked \(pagesLeaked)\n"
    for r in extensionReports { s += r.formatted + "\n" }
    s += "state checksum \(String(stateChecksum, radix: 16))\n"
    s += passed ? "PASS" : "FAIL"
    return s
  }
}

/// The multi-threaded randomized workload behind `pagealloc stress`.
///
/// Every worker mixes the whole API on its own allocations: `allocPages` /
/// `allocFrozenPages` of every order with assorted GFP flags (compound, zone modifiers,
/// migratetypes, atomic), `freePages`, `putPage`, `freeFrozenPages`, `splitPage`,
/// `getPage`/`putPage` (including the speculative-reference free of lib/test_free_pages.c),
/// `freeContigRange` of whole and partial runs, `freeContigFrozenRange`, `allocPagesBulk` /
/// `freePagesBulk` (sorted and shuffled), `allocContigPages` / `allocContigRange`,
/// `drainAllPages`, plus any ``StressExtension``. Allocation failures are injected with
/// `FaultInjection`. With ``StressConfiguration/badFreeRate`` it also frees deliberately
/// wrong (see ``StressEngine/BadFree``) and checks each one is reported.
public enum StressEngine {
  /// The deliberate bad frees of bad-free mode.
  public enum BadFree: String, CaseIterable, Sendable {
    case doubleFree = "double-free"
    case doubleFreeFrozen = "double-free-frozen"
    case putAfterContigFree = "put-after-free"
    case wrongOrder = "wrong-order"
    case foreignPFN = "foreign-pfn"
    case compoundHead = "compound-head"
  }

  /// One worker's thread state: its random numbers, the shared API-sequence driver over
  /// its own allocations, and its counts.
  final class Worker {
    let a: PageAllocator
    let index: Int
    var rng: StressRandom
    var sequence: APISequence
    let budget: Int
    var ops = 0
    var callCounts: [APISequence.Call: Int] = [:]
    var byKind: [String: Int] = [:]
    var allocFailures = 0
    var contigBusy = 0
    var badInjected = 0
    var badCaught = 0
    var badReports = 0
    var badByKind: [String: Int] = [:]
    var verifications = 0
    var verifyError: String?
    let extensions: [any StressExtension]
    let extensionWeight: Int

    init(_ a: PageAllocator, _ index: Int, seed: UInt64, budget: Int, extensions: [any StressExtension]) {
      self.a = a
      self.index = index
      rng = StressRandom(seed: seed &+ UInt64(index) &* 0x9E37_79B9)
      sequence = APISequence(a)
      self.budget = budget
      self.extensions = extensions
      extensionWeight = extensions.reduce(0) { $0 + max($1.weight, 0) }
    }

    /// Every kind counted, the driver's calls by their names.
    var operationsByKind: [String: Int] {
      var out = byKind
      for (c, n) in callCounts { out[c.name, default: 0] += n }
      return out
    }

    /// Applies `op` and counts what it did; false when it fitted nothing held.
    @discardableResult
    func run(_ op: APISequence.Op) -> Bool {
      let s = sequence.step(op)
      guard let call = s.call else { return false }
      callCounts[call, default: 0] += 1
      switch s.outcome {
      case .failed: allocFailures += 1
      case .busy: contigBusy += 1
      case .done, .invalid: break
      }
      return true
    }

    func randomOrder() -> Int {
      if rng.chance(0.55) { return 0 }
      if rng.chance(0.7) { return 1 + rng.below(3) }
      return 4 + rng.below(PageGeometry.maxOrder - 3)
    }

    func randomGFP(order: Int) -> GFP {
      var g: GFP
      switch rng.below(8) {
      case 0, 1: g = .kernel
      case 2, 3: g = .highUserMovable
      case 4: g = [.kernel, .reclaimable]
      case 5: g = .atomic
      case 6: g = [.kernel, .dma]
      default: g = .nowait
      }
      if order > 0 && rng.chance(0.25) { g.insert(.comp) }
      if rng.chance(0.5) { g.insert(.noWarn) }
      return g
    }

    // MARK: Operations

    /// One operation: an extension's step, or one of the driver's ops in the engine's mix.
    func step() {
      ops += 1
      if extensionWeight > 0 && rng.below(100 + extensionWeight) >= 100 {
        var pick = rng.below(extensionWeight)
        for e in extensions {
          let w = max(e.weight, 0)
          if pick < w {
            e.step(a, thread: index, random: &rng)
            byKind["ext:" + e.name, default: 0] += 1
            return
          }
          pick -= w
        }
      }
      let overBudget = sequence.held.pageCount > budget
      switch rng.below(100) {
      case 0..<30 where !overBudget:
        let order = randomOrder()
        var gfp = randomGFP(order: order)
        let frozen = rng.chance(0.15)
        if frozen { gfp.remove(.zero) }
        run(.alloc(order: order, gfp: gfp, frozen: frozen))
      case 30..<38:
        if !run(.split(pick: rng.below(max(sequence.held.count, 1)))) { freeOne() }
      case 38..<46:
        // A reference taken and dropped, or (half the time, on a block) the speculative
        // reference of lib/test_free_pages.c that outlives free_pages().
        let pick = rng.below(max(sequence.held.count, 1))
        if !(rng.chance(0.5) && run(.speculativeGet(pick: pick))) {
          run(.getPut(pick: pick, page: Int(truncatingIfNeeded: rng.next() >> 1)))
        }
      case 46..<51 where !overBudget:
        run(.allocBulk(count: 1 + rng.below(64), gfp: rng.chance(0.5) ? .kernel : .highUserMovable))
      case 51..<53 where !overBudget:
        let frozen = rng.chance(0.3)
        if rng.chance(0.2) {
          // A range chosen at random: usually busy (no migration).
          let n = 1 + rng.below(1024)
          let start = PFN(rng.below(a.pfnSpan.upperBound.value))
          run(.allocContigRange(start..<(start + n), gfp: .kernel, frozen: frozen))
        } else {
          let n = rng.chance(0.7) ? 1 << (4 + rng.below(8)) : 1 + rng.below(3000)
          run(.allocContig(count: n, gfp: [.kernel, .noWarn], frozen: frozen))
        }
      case 53:
        run(.drain)
      default:
        freeOne()
      }
    }

    func freeOne() {
      guard !sequence.held.isEmpty else { return }
      let way = APISequence.FreeWay(rawValue: rng.below(4))!
      run(.free(pick: rng.below(sequence.held.count), way: way, choice: rng.next()))
    }

    // MARK: Bad frees (run with every other worker paused)

    func badFree() {
      let kinds = BadFree.allCases
      let kind = kinds[rng.below(kinds.count)]
      let before = a.badPageCount
      var done = true
      switch kind {
      case .doubleFree:
        let o = randomOrder()
        if let p = a.allocPages(order: o, gfp: [.kernel, .noWarn]) {
          a.freePages(p, order: o)
          a.freePages(p, order: o)
        } else {
          done = false
        }
      case .doubleFreeFrozen:
        let o = randomOrder()
        if let p = a.allocFrozenPages(order: o, gfp: [.kernel, .noWarn]) {
          a.freeFrozenPages(p, order: o)
          a.freeFrozenPages(p, order: o)
        } else {
          done = false
        }
      case .putAfterContigFree:
        let o = 1 + rng.below(4)
        if let p = a.allocPages(order: o, gfp: [.kernel, .noWarn]) {
          a.splitPage(p, order: o)
          a.freeContigRange(p, count: 1 << o)
          a.putPage(p + rng.below(1 << o))
        } else {
          done = false
        }
      case .wrongOrder:
        let o = rng.below(PageGeometry.maxOrder)
        if let p = a.allocPages(order: o, gfp: [.kernel, .noWarn]) {
          let wrong = o == 0 || rng.chance(0.5) ? o + 1 : o - 1
          a.freePages(p, order: wrong)
          a.freePages(p, order: o)
        } else {
          done = false
        }
      case .foreignPFN:
        let span = a.pfnSpan
        var f: PFN
        switch rng.below(3) {
        case 0: f = span.upperBound + rng.below(1 << 20)
        case 1: f = PFN(-8 - rng.below(1000))  // stays negative for a 4-page range
        default:
          // A pfn in the memmap hole, or past the last zone when there is none.
          let hole = a.configuration.holes.first
          f = hole.map { $0.lowerBound + rng.below($0.count - 8) } ?? (span.upperBound + 7)
        }
        switch rng.below(5) {
        case 0: a.freePages(f, order: 0)
        case 1: a.putPage(f)
        case 2: a.freeFrozenPages(f, order: 0)
        case 3: a.freeContigRange(f, count: 4)
        default: a.getPage(f)
        }
      case .compoundHead:
        let o = 1 + rng.below(PageGeometry.maxOrder)
        if let p = a.allocPages(order: o, gfp: [.kernel, .comp, .noWarn]) {
          a.freeContigRange(p, count: 1 << o)
          a.freePages(p, order: o)
        } else {
          done = false
        }
      }
      guard done else { return }
      byKind["bad-free", default: 0] += 1
      badInjected += 1
      badByKind[kind.rawValue, default: 0] += 1
      let delta = a.badPageCount - before
      badReports += delta
      if delta > 0 { badCaught += 1 }
    }

    func verify() {
      verifications += 1
      do { try a.verify() } catch {
        if verifyError == nil { verifyError = "\(error)" }
      }
    }
  }

  /// Runs the workload and returns its summary. The allocator is created here from
  /// ``StressConfiguration/allocatorConfiguration``.
  public static func run(_ config: StressConfiguration) throws -> StressSummary {
    let a = try PageAllocator(configuration: config.allocatorConfiguration)
    return run(config, on: a)
  }

  /// Runs the workload on a given allocator (which should be all free).
  public static func run(_ config: StressConfiguration, on a: PageAllocator) -> StressSummary {
    precondition(config.threads >= 1, "threads must be at least 1")
    precondition(config.seconds != nil || config.operations != nil, "set seconds or operations")
    // Extensions first (before fault injection); one that cannot start is left out and
    // fails the run.
    var started: [any StressExtension] = []
    var prepareFailures: [StressExtensionReport] = []
    for e in config.extensions {
      do {
        try e.prepare(a, threads: config.threads)
        started.append(e)
      } catch {
        prepareFailures.append(StressExtensionReport(name: e.name, failures: ["cannot start: \(error)"]))
      }
    }
    let extensions = started
    if config.faultPercent > 0 {
      a.setFaultInjection(FaultInjection(probability: config.faultPercent, seed: config.seed | 1))
    }
    let n = config.threads
    let gates = StressGates(count: n)
    let budget = a.managedPageCount / (2 * n)
    let workers = UnsafeMutablePointer<Worker?>.allocate(capacity: n)
    workers.initialize(repeating: nil, count: n)
    defer {
      workers.deinitialize(count: n)
      workers.deallocate()
    }
    final class Shared: @unchecked Sendable {
      let workers: UnsafeMutablePointer<Worker?>
      init(_ w: UnsafeMutablePointer<Worker?>) { workers = w }
    }
    let shared = Shared(workers)
    let deadline: UInt64? = config.seconds.map { monotonicNanoseconds() &+ UInt64($0 * 1e9) }
    let total = config.operations
    let t0 = monotonicNanoseconds()
    try! runOnThreads(n) { t in
      PageAllocator.setThreadCPU(t % max(n, 2))
      let w = Worker(a, t, seed: config.seed, budget: budget, extensions: extensions)
      var limit = Int.max
      if let total { limit = total / n + (t < total % n ? 1 : 0) }
      var i = 0
      while i < limit {
        if i & 255 == 0, let deadline, monotonicNanoseconds() >= deadline { break }
        if config.badFreeRate > 0 && w.rng.chance(config.badFreeRate) {
          gates.exclusive { w.badFree() }
        } else {
          gates.enter(t)
          w.step()
          gates.leave(t)
        }
        i += 1
        if t == 0 && config.verifyEvery > 0 && i % config.verifyEvery == 0 {
          gates.exclusive { w.verify() }
        }
      }
      shared.workers[t] = w
    }
    let elapsed = monotonicNanoseconds() &- t0
    PageAllocator.setThreadCPU(0)

    // The free state before cleanup, then every worker's pages back.
    var hash: UInt64 = 0xcbf2_9ce4_8422_2325
    func mix(_ v: Int) {
      hash ^= UInt64(bitPattern: Int64(v))
      hash &*= 0x100_0000_01b3
    }
    for b in a.freeBlocks() { mix(b.pfn.value); mix(b.order) }
    for b in a.pcpBlocks() { mix(b.pfn.value); mix(~b.order) }
    let ownerSummary = a.isPageOwnerEnabled ? a.pageOwnerSummary() : nil
    let injected = a.faultInjection?.injected ?? 0
    a.setFaultInjection(nil)
    var summary = StressSummary(
      threads: n, seed: config.seed, operations: 0, operationsByKind: [:], elapsedNanoseconds: elapsed,
      allocationFailures: 0, failuresInjected: 0, contigBusy: 0, verifications: 0, badFreesInjected: 0,
      badFreesCaught: 0, badFreeReports: 0, badFreesByKind: [:], badPages: 0, unexpectedBadPages: 0,
      quarantinedPages: 0,
      pagesLeaked: 0, stateChecksum: hash, verifyError: nil)
    summary.failuresInjected = injected
    summary.pageOwnerSummary = ownerSummary
    for t in 0..<n {
      guard let w = workers[t] else { continue }
      summary.operations += w.ops
      for (k, v) in w.operationsByKind { summary.operationsByKind[k, default: 0] += v }
      summary.allocationFailures += w.allocFailures
      summary.contigBusy += w.contigBusy
      summary.verifications += w.verifications
      summary.badFreesInjected += w.badInjected
      summary.badFreesCaught += w.badCaught
      summary.badFreeReports += w.badReports
      for (k, v) in w.badByKind { summary.badFreesByKind[k, default: 0] += v }
      if summary.verifyError == nil { summary.verifyError = w.verifyError }
    }
    for t in 0..<n {
      guard let w = workers[t] else { continue }
      PageAllocator.setThreadCPU(t % max(n, 2))
      w.sequence.releaseAll()
      for e in extensions { e.finish(a, thread: t) }
    }
    summary.extensionReports = prepareFailures + extensions.map { $0.report() }
    PageAllocator.setThreadCPU(nil)
    a.drainAllPages()
    summary.verifications += 1
    do { try a.verify() } catch {
      if summary.verifyError == nil { summary.verifyError = "\(error)" }
    }
    summary.badPages = a.badPageCount
    summary.unexpectedBadPages = summary.badPages - summary.badFreeReports
    summary.quarantinedPages = a.quarantinedPageCount
    summary.pagesLeaked = a.managedPageCount - a.freePageCount - a.quarantinedPageCount
    if a.isPageOwnerEnabled { summary.leakReport = a.leakReport() }
    return summary
  }
}

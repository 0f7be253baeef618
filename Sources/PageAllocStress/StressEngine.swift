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

  /// The allocator configuration the engine builds.
  public var allocatorConfiguration: PageAllocator.Configuration {
    let hole = (pages / 2) & ~4095
    return PageAllocator.Configuration(
      zones: [
        ZoneConfiguration(kind: .dma, pfns: PFN(0)..<PFN(4096)),
        ZoneConfiguration(kind: .normal, pfns: PFN(4096)..<PFN(pages)),
      ], cpuCount: max(threads, 2),
      backing: backing ?? extensions.lazy.compactMap(\.requiredBacking).first ?? .none, sectionPages: 4096,
      holes: pages >= 16384 ? [PFN(hole)..<PFN(hole + 4096)] : [])
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
      "\(badFreesInjected)", "\(badFreesCaught)", "\(badFreeReports)", "\(badFreesByKind.sorted { $0.key < $1.key })", "\(badPages)",
      "\(quarantinedPages)", "\(pagesLeaked)", "\(stateChecksum)",
    ] + extensionReports.map(\.formatted)
  }

  public var description: String {
    var s = ""
    s += "threads \(threads)  seed \(seed)\n"
    s += "operations \(operations) in \(fixed(Double(elapsedNanoseconds) / 1e9, 2)) s: \(Int(opsPerSecond)) ops/s\n"
    s += "  " + operationsByKind.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ") + "\n"
    s += "allocation failures \(allocationFailures) (injected \(failuresInjected)), contig busy \(contigBusy)\n"
    s += "verifications \(verifications): \(verifyError ?? "ok")\n"
    s += "bad frees injected \(badFreesInjected), caught \(badFreesCaught), reports \(badFreeReports)"
    if !badFreesByKind.isEmpty {
      s += " (" + badFreesByKind.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ") + ")"
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

  enum Held {
    case block(PFN, order: Int, frozen: Bool, compound: Bool)
    /// Contiguous order-0 pages, each with refcount 1 (0 when frozen).
    case run(PFN, count: Int, frozen: Bool)
    /// Order-0 pages with refcount 1 from the bulk allocator.
    case pages([PFN])

    var pageCount: Int {
      switch self {
      case .block(_, let o, _, _): 1 << o
      case .run(_, let n, _): n
      case .pages(let p): p.count
      }
    }
  }

  final class Worker {
    let a: PageAllocator
    let index: Int
    var rng: StressRandom
    var held: [Held] = []
    var heldPages = 0
    let budget: Int
    var ops = 0
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
      self.budget = budget
      self.extensions = extensions
      extensionWeight = extensions.reduce(0) { $0 + max($1.weight, 0) }
    }

    @inline(__always)
    func count(_ k: String) { byKind[k, default: 0] += 1 }

    func hold(_ h: Held) {
      held.append(h)
      heldPages += h.pageCount
    }

    func takeRandom() -> Held? {
      guard !held.isEmpty else { return nil }
      let i = rng.below(held.count)
      held.swapAt(i, held.count - 1)
      let h = held.removeLast()
      heldPages -= h.pageCount
      return h
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

    func step() {
      ops += 1
      if extensionWeight > 0 && rng.below(100 + extensionWeight) >= 100 {
        var pick = rng.below(extensionWeight)
        for e in extensions {
          let w = max(e.weight, 0)
          if pick < w {
            e.step(a, thread: index, random: &rng)
            count("ext:" + e.name)
            return
          }
          pick -= w
        }
      }
      let overBudget = heldPages > budget
      let r = rng.below(100)
      switch r {
      case 0..<30 where !overBudget: allocBlock()
      case 30..<38: splitHeld()
      case 38..<46: getPut()
      case 46..<51 where !overBudget: bulkAlloc()
      case 51..<53 where !overBudget: contigAlloc()
      case 53:
        a.drainAllPages()
        count("drain")
      default: freeOne()
      }
    }

    func allocBlock() {
      let order = randomOrder()
      var gfp = randomGFP(order: order)
      let frozen = rng.chance(0.15)
      if frozen { gfp.remove(.zero) }
      let p = frozen ? a.allocFrozenPages(order: order, gfp: gfp) : a.allocPages(order: order, gfp: gfp)
      count(frozen ? "alloc-frozen" : "alloc")
      guard let p else {
        allocFailures += 1
        return
      }
      hold(.block(p, order: order, frozen: frozen, compound: gfp.contains(.comp) && order > 0))
    }

    func bulkAlloc() {
      var pages: [PFN] = []
      let n = 1 + rng.below(64)
      let got = a.allocPagesBulk(count: n, gfp: rng.chance(0.5) ? .kernel : .highUserMovable, into: &pages)
      count("alloc-bulk")
      if got < n { allocFailures += 1 }
      if !pages.isEmpty { hold(.pages(pages)) }
    }

    func contigAlloc() {
      let frozen = rng.chance(0.3)
      if rng.chance(0.2) {
        // A range chosen at random: usually busy (no migration).
        let n = 1 + rng.below(1024)
        let start = rng.below(a.pfnSpan.upperBound.value)
        let range = PFN(start)..<PFN(start + n)
        count("contig-range")
        do {
          if frozen { try a.allocContigFrozenRange(range, gfp: .kernel) } else { try a.allocContigRange(range, gfp: .kernel) }
          hold(.run(range.lowerBound, count: n, frozen: frozen))
        } catch {
          if case .busy = error { contigBusy += 1 }
        }
        return
      }
      let n = rng.chance(0.7) ? 1 << (4 + rng.below(8)) : 1 + rng.below(3000)
      count("contig-pages")
      let p = frozen
        ? a.allocContigFrozenPages(count: n, gfp: [.kernel, .noWarn]) : a.allocContigPages(count: n, gfp: [.kernel, .noWarn])
      guard let p else {
        allocFailures += 1
        return
      }
      hold(.run(p, count: n, frozen: frozen))
    }

    func splitHeld() {
      guard !held.isEmpty else { return freeOne() }
      let i = rng.below(held.count)
      guard case .block(let p, let o, false, false) = held[i], o > 0 else { return freeOne() }
      a.splitPage(p, order: o)
      held[i] = .run(p, count: 1 << o, frozen: false)
      count("split")
    }

    func getPut() {
      guard let h = takeRandom() else { return }
      switch h {
      case .block(let p, let o, false, let compound):
        a.getPage(p)
        if rng.chance(0.5) {
          a.putPage(p)
          hold(h)
          count("get-put")
        } else {
          // lib/test_free_pages.c: a speculative reference outlives free_pages(); the
          // tail halves go now, the head at the last put.
          a.freePages(p, order: o)
          a.putPage(p)
          count(compound ? "get-free-put-compound" : "get-free-put")
        }
      case .run(let p, let n, false):
        let q = p + rng.below(n)
        a.getPage(q)
        a.putPage(q)
        hold(h)
        count("get-put")
      case .pages(let ps):
        let q = ps[rng.below(ps.count)]
        a.getPage(q)
        a.putPage(q)
        hold(h)
        count("get-put")
      default:
        hold(h)
      }
    }

    func freeOne() {
      guard let h = takeRandom() else { return }
      release(h, random: true)
    }

    /// Frees a held item the well-behaved way (a random one of the valid ways).
    func release(_ h: Held, random: Bool) {
      let pick = random ? rng.below(4) : 0
      switch h {
      case .block(let p, let o, false, _):
        if pick < 2 {
          a.freePages(p, order: o)
          count("free-pages")
        } else {
          a.putPage(p)
          count("put-page")
        }
      case .block(let p, let o, true, let compound):
        if pick < 2 || compound {
          a.freeFrozenPages(p, order: o)
          count("free-frozen")
        } else {
          a.freeContigFrozenRange(p, count: 1 << o)
          count("free-contig-frozen")
        }
      case .run(let p, let n, let frozen):
        if random && n > 2 && pick == 3 {
          // Free a middle part, keep both ends.
          let a0 = 1 + rng.below(n - 2)
          let k = 1 + rng.below(n - a0 - 1)
          if frozen { a.freeContigFrozenRange(p + a0, count: k) } else { a.freeContigRange(p + a0, count: k) }
          hold(.run(p, count: a0, frozen: frozen))
          hold(.run(p + a0 + k, count: n - a0 - k, frozen: frozen))
          count(frozen ? "free-contig-frozen-part" : "free-contig-part")
        } else if pick == 2 && n <= 64 {
          for i in 0..<n {
            if frozen { a.freeFrozenPages(p + i, order: 0) } else { a.putPage(p + i) }
          }
          count("free-per-page")
        } else if pick == 1 && !frozen {
          var pfns = (0..<n).map { p + $0 }
          if rng.chance(0.5) { shuffle(&pfns) }
          a.freePagesBulk(pfns)
          count("free-pages-bulk")
        } else {
          if frozen { a.freeContigFrozenRange(p, count: n) } else { a.freeContigRange(p, count: n) }
          count(frozen ? "free-contig-frozen" : "free-contig")
        }
      case .pages(var ps):
        if pick < 2 {
          if rng.chance(0.5) { ps.sort() } else { shuffle(&ps) }
          a.freePagesBulk(ps)
          count("free-pages-bulk")
        } else {
          for q in ps { a.putPage(q) }
          count("free-per-page")
        }
      }
    }

    func shuffle(_ x: inout [PFN]) {
      if x.count < 2 { return }
      for i in stride(from: x.count - 1, to: 0, by: -1) { x.swapAt(i, rng.below(i + 1)) }
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
        } else { done = false }
      case .doubleFreeFrozen:
        let o = randomOrder()
        if let p = a.allocFrozenPages(order: o, gfp: [.kernel, .noWarn]) {
          a.freeFrozenPages(p, order: o)
          a.freeFrozenPages(p, order: o)
        } else { done = false }
      case .putAfterContigFree:
        let o = 1 + rng.below(4)
        if let p = a.allocPages(order: o, gfp: [.kernel, .noWarn]) {
          a.splitPage(p, order: o)
          a.freeContigRange(p, count: 1 << o)
          a.putPage(p + rng.below(1 << o))
        } else { done = false }
      case .wrongOrder:
        let o = rng.below(PageGeometry.maxOrder)
        if let p = a.allocPages(order: o, gfp: [.kernel, .noWarn]) {
          let wrong = o == 0 || rng.chance(0.5) ? o + 1 : o - 1
          a.freePages(p, order: wrong)
          a.freePages(p, order: o)
        } else { done = false }
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
        } else { done = false }
      }
      guard done else { return }
      count("bad-free")
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
    let injected = a.faultInjection?.injected ?? 0
    a.setFaultInjection(nil)
    var summary = StressSummary(
      threads: n, seed: config.seed, operations: 0, operationsByKind: [:], elapsedNanoseconds: elapsed,
      allocationFailures: 0, failuresInjected: 0, contigBusy: 0, verifications: 0, badFreesInjected: 0,
      badFreesCaught: 0, badFreeReports: 0, badFreesByKind: [:], badPages: 0, unexpectedBadPages: 0, quarantinedPages: 0,
      pagesLeaked: 0, stateChecksum: hash, verifyError: nil)
    summary.failuresInjected = injected
    for t in 0..<n {
      guard let w = workers[t] else { continue }
      summary.operations += w.ops
      for (k, v) in w.byKind { summary.operationsByKind[k, default: 0] += v }
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
      while let h = w.held.popLast() { w.release(h, random: false) }
      w.heldPages = 0
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
    return summary
  }
}

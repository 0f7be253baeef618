import PageAlloc
import _PageAllocUtilities
import PageAllocVMalloc
import CPageAllocShim
import Glibc
import Synchronization

/// The stress engine's random numbers, handed to every ``StressExtension`` step:
/// deterministic for a seed on every platform.
///
/// A public face over the package's one generator (`SeededRandom`, xoshiro256** seeded by
/// splitmix64), which stays package-internal: extensions outside the package need a public
/// type, and the forwarding is inlined away.
@frozen
public struct StressRandom: RandomNumberGenerator, Sendable {
  @usableFromInline package var generator: SeededRandom

  @inlinable
  public init(seed: UInt64) { generator = SeededRandom(seed: seed) }

  @inlinable @inline(__always)
  public mutating func next() -> UInt64 { generator.next() }

  /// A uniform integer in `0..<n` (n > 0).
  @inlinable @inline(__always)
  public mutating func below(_ n: Int) -> Int { generator.below(n) }

  /// True with probability `p` (0...1).
  @inlinable @inline(__always)
  public mutating func chance(_ p: Double) -> Bool { generator.chance(p) }
}

/// A workload plugged into `pagealloc stress` (vmalloc: ``VMallocStressExtension``).
///
/// The engine calls ``prepare(_:threads:)`` once before the workers start, then
/// ``step(_:thread:random:)`` with relative weight ``weight`` among its own operations,
/// inside the same per-thread gate (so verification pauses it too), then
/// ``finish(_:thread:)`` once per worker at the end, after which the extension must hold no
/// page (the leak check counts every page), and last ``report()``, whose failures fail the
/// run. An extension that needs real memory says so with ``requiredBacking``: the engine's
/// allocator then uses that backing instead of `.none`.
public protocol StressExtension: Sendable {
  var name: String { get }
  var weight: Int { get }
  /// The memory backing the extension needs (nil: any, including `.none`).
  var requiredBacking: Backing? { get }
  /// Called once per run, before any step, on the allocator the run uses. A thrown error
  /// fails the run and leaves the extension out of it.
  func prepare(_ allocator: PageAllocator, threads: Int) throws
  func step(_ allocator: PageAllocator, thread: Int, random: inout StressRandom)
  func finish(_ allocator: PageAllocator, thread: Int)
  /// What the extension did and what went wrong, after every ``finish(_:thread:)``.
  func report() -> StressExtensionReport
}

extension StressExtension {
  public var requiredBacking: Backing? { nil }
  public func prepare(_ allocator: PageAllocator, threads: Int) throws {}
  public func report() -> StressExtensionReport { StressExtensionReport(name: name) }
}

/// An extension's counts and failures for ``StressSummary``.
public struct StressExtensionReport: Sendable, Equatable {
  public var name: String
  /// Operations by kind (deterministic for a single-thread run).
  public var counts: [String: Int]
  /// Problems found (pattern mismatches, leaks); any fails the run.
  public var failures: [String]

  public init(name: String, counts: [String: Int] = [:], failures: [String] = []) {
    self.name = name
    self.counts = counts
    self.failures = failures
  }

  /// `name: k v, k v` and, when there are any, the first failures.
  public var formatted: String {
    var s = name + ": " + counts.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
    if failures.isEmpty {
      s += "; no failure"
    } else {
      s += "; \(failures.count) failure(s): " + failures.prefix(5).joined(separator: "; ")
    }
    return s
  }
}

/// Per-worker gates: a worker holds its own gate while it runs an operation; an
/// exclusive operation (verification, a deliberate bad free) takes every gate, in order,
/// so it runs while no worker is inside an operation.
final class StressGates: @unchecked Sendable {
  let count: Int
  let mutexes: UnsafeMutablePointer<pthread_mutex_t>
  let pending = Atomic<Int>(0)

  init(count: Int) {
    self.count = count
    mutexes = .allocate(capacity: count)
    for i in 0..<count { pthread_mutex_init(mutexes + i, nil) }
  }

  deinit {
    for i in 0..<count { pthread_mutex_destroy(mutexes + i) }
    mutexes.deallocate()
  }

  @inline(__always)
  func enter(_ t: Int) {
    while pending.load(ordering: .acquiring) > 0 { sched_yield() }
    pthread_mutex_lock(mutexes + t)
  }

  @inline(__always)
  func leave(_ t: Int) { pthread_mutex_unlock(mutexes + t) }

  func exclusive<R>(_ body: () throws -> R) rethrows -> R {
    pending.wrappingAdd(1, ordering: .acquiringAndReleasing)
    for i in 0..<count { pthread_mutex_lock(mutexes + i) }
    defer {
      for i in (0..<count).reversed() { pthread_mutex_unlock(mutexes + i) }
      pending.wrappingSubtract(1, ordering: .acquiringAndReleasing)
    }
    return try body()
  }
}

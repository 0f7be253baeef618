import PageAlloc
import _PageAllocUtilities
import PageAllocVMalloc
import CPageAllocShim
import Glibc
import Synchronization

/// The stress engine's random numbers: splitmix64-seeded xoshiro256**, deterministic for a
/// seed on every platform.
public struct StressRandom: Sendable {
  var s0: UInt64, s1: UInt64, s2: UInt64, s3: UInt64

  public init(seed: UInt64) {
    var x = seed
    func splitmix(_ x: inout UInt64) -> UInt64 {
      x &+= 0x9E37_79B9_7F4A_7C15
      var z = x
      z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
      z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
      return z ^ (z >> 31)
    }
    s0 = splitmix(&x)
    s1 = splitmix(&x)
    s2 = splitmix(&x)
    s3 = splitmix(&x)
  }

  @inline(__always)
  public mutating func next() -> UInt64 {
    let result = ((s1 &* 5) << 7 | (s1 &* 5) >> 57) &* 9
    let t = s1 << 17
    s2 ^= s0
    s3 ^= s1
    s1 ^= s2
    s0 ^= s3
    s2 ^= t
    s3 = (s3 << 45) | (s3 >> 19)
    return result
  }

  /// A uniform integer in `0..<n` (n > 0).
  @inline(__always)
  public mutating func below(_ n: Int) -> Int {
    Int(truncatingIfNeeded: (next() >> 1) % UInt64(n))
  }

  /// True with probability `p` (0...1).
  @inline(__always)
  public mutating func chance(_ p: Double) -> Bool {
    Double(next() >> 11) * (1.0 / 9_007_199_254_740_992.0) < p
  }
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


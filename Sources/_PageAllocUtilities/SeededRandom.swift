/// The package's one pseudo-random generator: xoshiro256** seeded through splitmix64.
///
/// Every randomized workload above the core draws from it (the stress engine, the API
/// sequence driver, the info workloads, the tests), so a seed names the same run on every
/// platform and in every build. It is not for anything secret. The core's
/// `FaultInjection` keeps its own xorshift64*: which allocations fail for a given seed is
/// part of the core's behaviour, and the core does not change for the tools built over
/// it. Everything is inlinable: the stress engine draws several numbers per operation.
@frozen
@usableFromInline
package struct SeededRandom: RandomNumberGenerator, Sendable, Hashable {
  @usableFromInline package var s0: UInt64, s1: UInt64, s2: UInt64, s3: UInt64

  /// Any seed, zero included: splitmix64 spreads it over the four words, which are then
  /// never all zero.
  @inlinable
  package init(seed: UInt64) {
    var x = seed
    s0 = Self.splitmix(&x)
    s1 = Self.splitmix(&x)
    s2 = Self.splitmix(&x)
    s3 = Self.splitmix(&x)
  }

  @inlinable
  static func splitmix(_ x: inout UInt64) -> UInt64 {
    x &+= 0x9E37_79B9_7F4A_7C15
    var z = x
    z = (z ^ (z &>> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z &>> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z &>> 31)
  }

  @inlinable @inline(__always)
  package mutating func next() -> UInt64 {
    let result = ((s1 &* 5) &<< 7 | (s1 &* 5) &>> 57) &* 9
    let t = s1 &<< 17
    s2 ^= s0
    s3 ^= s1
    s1 ^= s2
    s0 ^= s3
    s2 ^= t
    s3 = (s3 &<< 45) | (s3 &>> 19)
    return result
  }

  /// A uniform integer in `0..<n` (n > 0), up to a modulo bias of n / 2^63.
  @inlinable @inline(__always)
  package mutating func below(_ n: Int) -> Int {
    Int(truncatingIfNeeded: (next() &>> 1) % UInt64(n))
  }

  /// True with probability `p` (0...1).
  @inlinable @inline(__always)
  package mutating func chance(_ p: Double) -> Bool {
    Double(next() &>> 11) * (1.0 / 9_007_199_254_740_992.0) < p
  }

  /// Fisher-Yates, drawing from this generator (the standard library's `shuffle(using:)`
  /// does not promise which numbers it draws, so a seed would not name one order).
  @inlinable
  package mutating func shuffle<T>(_ x: inout [T]) {
    if x.count < 2 { return }
    for i in stride(from: x.count - 1, to: 0, by: -1) { x.swapAt(i, below(i + 1)) }
  }
}

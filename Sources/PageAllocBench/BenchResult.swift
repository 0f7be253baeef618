@_spi(Benchmark) import PageAlloc
import _PageAllocUtilities
import PageAllocVMalloc
import Glibc

/// One measured figure of `pagealloc bench`: a suite, a variant (the free path or the
/// comparison), and its timing. Every suite returns these; the harness prints and writes
/// them (`--json`).
public struct BenchResult: Sendable, Codable, Hashable {
  /// The suite (`high-order`, `floor`, `frozen-range`, `order0`, `bulk`, `vmalloc`, `cma`...).
  public var suite: String
  /// The variant inside the suite (`per-page`, `contig`, `floor`, `threads-2`...).
  public var variant: String
  /// The order, where the suite has one.
  public var order: Int?
  public var iterations: Int
  public var pagesPerIteration: Int
  /// Wall time of the measured part, nanoseconds.
  public var totalNanoseconds: UInt64
  /// Further figures (e.g. `pairs_per_second`, `mallocs`).
  public var extra: [String: Double]

  public init(
    suite: String, variant: String, order: Int? = nil, iterations: Int, pagesPerIteration: Int,
    totalNanoseconds: UInt64, extra: [String: Double] = [:]
  ) {
    self.suite = suite
    self.variant = variant
    self.order = order
    self.iterations = iterations
    self.pagesPerIteration = pagesPerIteration
    self.totalNanoseconds = totalNanoseconds
    self.extra = extra
  }

  public var totalMicroseconds: Double { Double(totalNanoseconds) / 1000 }
  public var nsPerIteration: Double { iterations > 0 ? Double(totalNanoseconds) / Double(iterations) : 0 }
  public var nsPerPage: Double {
    let pages = iterations * pagesPerIteration
    return pages > 0 ? Double(totalNanoseconds) / Double(pages) : 0
  }
}

/// Keeps a value alive and opaque to the optimizer.
@inline(never)
func blackHole<T>(_ x: T) { _ = x }

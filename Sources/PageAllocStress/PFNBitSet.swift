import PageAlloc
import _PageAllocUtilities

/// A set of pfns kept as a bitmap over an allocator's pfn span (pfns outside it are never
/// members): the driver marks and tests damaged pages by the thousand per fuzz input, which
/// a `Set<PFN>` made the largest cost of an execution after verify().
package struct PFNBitSet: Sendable {
  let base: Int
  let end: Int
  var words: [UInt64]
  package private(set) var isEmpty = true

  init(_ span: Range<PFN>) {
    base = span.lowerBound.value
    end = span.upperBound.value
    words = [UInt64](repeating: 0, count: (span.count + 63) / 64)
  }

  package func contains(_ p: PFN) -> Bool {
    guard p.value >= base && p.value < end else { return false }
    let i = p.value - base
    return words[i >> 6] & (1 << UInt64(i & 63)) != 0
  }

  /// Adds the pfns of `r` that lie in the span.
  mutating func insert(_ r: Range<Int>) {
    var i = max(r.lowerBound, base) - base
    let stop = min(r.upperBound, end) - base
    while i < stop {
      if i & 63 == 0 && stop - i >= 64 {
        words[i >> 6] = ~0
        i += 64
      } else {
        words[i >> 6] |= 1 << UInt64(i & 63)
        i += 1
      }
      isEmpty = false
    }
  }

  /// Whether a pfn of `r` is in the set.
  func intersects(_ r: Range<Int>) -> Bool {
    var i = max(r.lowerBound, base)
    let stop = min(r.upperBound, end)
    while i < stop {
      if words[(i - base) >> 6] & (1 << UInt64((i - base) & 63)) != 0 { return true }
      i += 1
    }
    return false
  }
}

/// A page frame number: the index of a 4 KiB page in the allocator's physical address space.
///
/// Every page is named by its PFN everywhere in PageAlloc, as in the kernel. PFNs are
/// plain integers with value semantics; `pfn + n` and `pfn - n` move by `n` pages.
@frozen
public struct PFN: Hashable, Comparable, Strideable, Sendable, ExpressibleByIntegerLiteral,
  CustomStringConvertible
{
  /// The frame number.
  public var value: Int

  @inlinable @inline(__always)
  public init(_ value: Int) { self.value = value }

  @inlinable @inline(__always)
  public init(integerLiteral value: Int) { self.value = value }

  @inlinable @inline(__always)
  public static func < (a: PFN, b: PFN) -> Bool { a.value < b.value }

  @inlinable @inline(__always)
  public func distance(to other: PFN) -> Int { other.value &- value }

  @inlinable @inline(__always)
  public func advanced(by n: Int) -> PFN { PFN(value &+ n) }

  @inlinable @inline(__always)
  public static func + (a: PFN, n: Int) -> PFN { PFN(a.value &+ n) }

  @inlinable @inline(__always)
  public static func + (n: Int, a: PFN) -> PFN { PFN(a.value &+ n) }

  @inlinable @inline(__always)
  public static func - (a: PFN, n: Int) -> PFN { PFN(a.value &- n) }

  @inlinable @inline(__always)
  public static func += (a: inout PFN, n: Int) { a.value &+= n }

  @inlinable @inline(__always)
  public static func -= (a: inout PFN, n: Int) { a.value &-= n }

  /// The kernel's printing of a pfn: `0x` and lower-case hex.
  public var description: String { "0x" + String(value, radix: 16) }
}

/// Geometry constants of the modelled kernel (x86-64, 4 KiB pages).
public enum PageGeometry {
  /// `MAX_PAGE_ORDER`: the largest buddy order.
  public static let maxOrder = 10
  /// `NR_PAGE_ORDERS`.
  public static let orderCount = 11
  /// `pageblock_order` (HPAGE_PMD_ORDER on x86-64).
  public static let pageblockOrder = 9
  /// `pageblock_nr_pages`.
  public static let pageblockPages = 1 << 9
  /// `PAGE_ALLOC_COSTLY_ORDER`.
  public static let costlyOrder = 3
  /// `PAGE_SIZE`.
  public static let pageSize = 4096
  /// `PAGE_SHIFT`.
  public static let pageShift = 12

  /// `PageGeometry.floorLog2(n)`: floor(log2(n)) for n > 0, the order of the largest power of two that
  /// fits in `n` pages.
  @inlinable @inline(__always)
  public static func floorLog2(_ n: Int) -> Int { (Int.bitWidth &- 1) &- n.leadingZeroBitCount }
}

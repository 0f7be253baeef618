// The page flags a caller may set on its own pages: the public face of `PG` (Internals/PageRecord.swift).

/// Page flags a caller may set on its own pages (to model a page in a bad state, or a
/// hardware-poisoned page). See ``PageAllocator/setPageFlags(_:_:)``.
public struct PageFlags: OptionSet, Sendable, Hashable {
  public var rawValue: UInt32
  public init(rawValue: UInt32) { self.rawValue = rawValue }
  public static let reserved = PageFlags(rawValue: PG.reserved)
  public static let hwpoison = PageFlags(rawValue: PG.hwpoison)
  public static let locked = PageFlags(rawValue: PG.locked)
  public static let lru = PageFlags(rawValue: PG.lru)
  public static let `private` = PageFlags(rawValue: PG.private_)
  public static let writeback = PageFlags(rawValue: PG.writeback)
  public static let active = PageFlags(rawValue: PG.active)
  public static let unevictable = PageFlags(rawValue: PG.unevictable)
  public static let mlocked = PageFlags(rawValue: PG.mlocked)
  /// The flags a caller may set.
  public static let settable: PageFlags = [
    .reserved, .hwpoison, .locked, .lru, .private, .writeback, .active, .unevictable, .mlocked,
  ]
}

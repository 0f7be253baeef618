import Synchronization

/// One page's metadata: the 16-byte analogue of `struct page`.
///
/// - `refcount` is the kernel's `_refcount`.
/// - `flags` packs the page flags (low 16 bits) and an order (bits 16..23): the buddy order
///   of a free block head (`page->private`), the order of a block on a pcp list, the
///   compound order of a compound head, or the allocation order of a non-compound head
///   (which lets `freePages` catch a wrong order; the kernel cannot).
/// - `next` / `prev` link the page into one free list or pcp list (the kernel's
///   `page->buddy_list` / `pcp_list`) as 32-bit pfns; ``PageRecord/nilLink`` ends a list.
///   They are only touched under the lock of the list the page is on.
@usableFromInline
struct PageRecord: ~Copyable {
  @usableFromInline let refcount: Atomic<Int32>
  @usableFromInline let flags: Atomic<UInt32>
  @usableFromInline var next: UInt32
  @usableFromInline var prev: UInt32

  @usableFromInline static let nilLink: UInt32 = .max
}

/// Page flag bits as stored in ``PageRecord/flags``.
@usableFromInline
enum PG {
  /// PageBuddy: the head of a free block on a zone free list.
  @usableFromInline static let buddy: UInt32 = 1 << 0
  /// On a per-CPU list (the head of a pcp block).
  @usableFromInline static let pcp: UInt32 = 1 << 1
  /// Compound head (PG_head).
  @usableFromInline static let head: UInt32 = 1 << 2
  /// Compound tail.
  @usableFromInline static let tail: UInt32 = 1 << 3
  @usableFromInline static let reserved: UInt32 = 1 << 4
  @usableFromInline static let hwpoison: UInt32 = 1 << 5
  /// Kept off every list after a bad-page report (the kernel leaks such pages).
  @usableFromInline static let quarantined: UInt32 = 1 << 6
  @usableFromInline static let locked: UInt32 = 1 << 7
  @usableFromInline static let lru: UInt32 = 1 << 8
  @usableFromInline static let private_: UInt32 = 1 << 9
  @usableFromInline static let writeback: UInt32 = 1 << 10
  @usableFromInline static let active: UInt32 = 1 << 11
  @usableFromInline static let unevictable: UInt32 = 1 << 12
  @usableFromInline static let mlocked: UInt32 = 1 << 13
  /// Ours, with no kernel counterpart: set on the head of an allocated block (compound or
  /// not) when one of its tail pages is changed on its own (flags set on it, freed,
  /// quarantined) while the block is allocated. Without it each tail is in the state the
  /// allocation left it in, which is what lets the block's free skip reading the tails
  /// (PageAllocator+TailState.swift).
  @usableFromInline static let tailsTouched: UInt32 = 1 << 14

  /// PAGE_FLAGS_CHECK_AT_FREE (the subset we model). PG_mlocked is not in it: the free
  /// path clears it and frees the page (`__free_pages_prepare()`).
  @usableFromInline static let checkAtFree: UInt32 =
    reserved | locked | lru | private_ | writeback | active | unevictable
  /// Flags that mean "this page is free already".
  @usableFromInline static let freeMask: UInt32 = buddy | pcp
  /// Everything a page about to be freed as order 0 must not carry, besides hwpoison.
  @usableFromInline static let badAtFree: UInt32 = freeMask | head | tail | checkAtFree | quarantined

  @usableFromInline static let flagMask: UInt32 = 0xFFFF
  @usableFromInline static let orderShift: UInt32 = 16

  @inlinable @inline(__always)
  static func order(_ word: UInt32) -> Int { Int((word &>> orderShift) & 0xFF) }

  @inlinable @inline(__always)
  static func word(flags: UInt32, order: Int) -> UInt32 { flags | (UInt32(truncatingIfNeeded: order) &<< orderShift) }
}

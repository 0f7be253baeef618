internal import _PageAllocUtilities
import CPageAllocShim
import Glibc

// The debugging steps of `post_alloc_hook()` and `__free_pages_prepare()`, behind the one
// `debugging` branch the allocation and free paths take: debug_pagealloc's map and unmap,
// page poisoning's fill and check, init_on_alloc / init_on_free, and page_owner's records.
// Each runs in the kernel's order:
//
//   free:  reset_page_owner -> poison (or init_on_free zeroing) -> unmap
//   alloc: map -> poison check -> zeroing -> set_page_owner
//
// so that a poison report still shows the previous life's page_owner record, and the
// bytes are written while the pages are accessible.

extension PageAllocator {
  /// `post_alloc_hook()`'s debugging steps for a block of `2^order` pages just taken off a
  /// free list. Captures the allocation stack from its caller on.
  @usableFromInline @inline(never)
  func debugAllocHook(_ pfn: Int, _ order: Int, _ gfp: GFP) {
    let handle = debug.owner != nil ? cpa_depot_capture(1) : 0
    postAllocDebug(pfn, 1 &<< order, recordOrder: order, gfp, handle)
  }

  /// ``debugAllocHook(_:_:_:)`` for `count` pages from `pfn` that become allocations of
  /// `recordOrder` each (a contiguous range: order 0 pages, or one compound page).
  @inline(never)
  func debugAllocRangeHook(_ pfn: Int, _ count: Int, recordOrder: Int, _ gfp: GFP) {
    let handle = debug.owner != nil ? cpa_depot_capture(1) : 0
    postAllocDebug(pfn, count, recordOrder: recordOrder, gfp, handle)
  }

  func postAllocDebug(_ pfn: Int, _ count: Int, recordOrder: Int, _ gfp: GFP, _ handle: UInt32) {
    if debug.protect { unprotectPages(pfn, count) }
    if poisoning { checkPoison(pfn, count) }
    // want_init_on_alloc(): init_on_alloc or __GFP_ZERO, unless init_on_free zeroed the
    // pages when they were freed.
    if !debug.initOnFree && (debug.initOnAlloc || gfp.contains(.zero)), let a = arena.address(of: pfn) {
      memset(a, 0, count &* PageGeometry.pageSize)
    }
    if let table = debug.owner {
      ownerAlloc(table, pfn, count, recordOrder, gfp, handle)
      if debug.protect { preformatStack(handle) }
    }
  }

  /// `__free_pages_prepare()`'s debugging steps for `count` prepared pages from `pfn` (a
  /// block, or a run of the chunked free): they are about to go to a free list. Captures
  /// the free stack from its caller on, once for the whole run.
  @usableFromInline @inline(never)
  func debugFreeHook(_ pfn: Int, _ count: Int) {
    if let table = debug.owner {
      let handle = cpa_depot_capture(1)
      ownerFree(table, pfn, count, handle)
      if debug.protect { preformatStack(handle) }
    }
    if poisoning {
      fillPoison(pfn, count)
    } else if debug.initOnFree, let a = arena.address(of: pfn) {
      memset(a, 0, count &* PageGeometry.pageSize)
    }
    // Last, as the kernel unmaps last: a page on a pcp list is protected too.
    if debug.protect { protectPages(pfn, count) }
  }

  /// `split_page_owner()`: every page of a split block becomes its own order-0 allocation.
  @usableFromInline @inline(never)
  func debugSplitHook(_ pfn: Int, _ order: Int) {
    guard let table = debug.owner else { return }
    var r = table + (pfn &- debug.basePFN)
    let end = r + (1 &<< order)
    while r < end {
      r.pointee.alloc_word = r.pointee.alloc_word & ~0xff
      r += 1
    }
  }

  /// The fault handler prints stacks from the depot's text (it cannot symbolize): give a
  /// new stack its text now, once.
  func preformatStack(_ handle: UInt32) {
    guard handle > CPA_DEPOT_FAILURE, cpa_depot_text(handle) == nil else { return }
    let text = PageOwnerStack(handle: handle).frames.map { " " + $0 + "\n" }.joined()
    cpa_depot_set_text(handle, text)
  }

  // MARK: - Poisoning (mm/page_poison.c)

  /// The poison byte of CONFIG_PAGE_POISONING (PAGE_POISON).
  static let poisonByte: UInt8 = 0xaa

  /// `kernel_poison_pages()`: fills `count` pages with the poison byte.
  @usableFromInline @inline(never)
  func fillPoison(_ pfn: Int, _ count: Int) {
    guard let a = arena.address(of: pfn) else { return }
    memset(a, Int32(PageAllocator.poisonByte), count &* PageGeometry.pageSize)
    if let marks = debug.poisoned {
      (marks + (pfn &- debug.basePFN)).update(repeating: 1, count: count)
    }
  }

  /// `kernel_unpoison_pages()` / `check_poison_mem()`: each of `count` pages from `pfn`
  /// that was poisoned by a free must still hold the poison byte everywhere. A changed page
  /// is reported (the allocation goes on, as in the kernel): "single bit error" when one
  /// byte differs in one bit, "memory corruption" otherwise, with a hex dump from the first
  /// to the last changed byte and the page's page_owner record.
  @usableFromInline @inline(never)
  func checkPoison(_ pfn: Int, _ count: Int) {
    var i = 0
    while i < count {
      let q = pfn &+ i
      i &+= 1
      if let marks = debug.poisoned, marks[q &- debug.basePFN] == 0 { continue }
      guard let a = arena.address(of: q) else { return }
      let words = a.assumingMemoryBound(to: UInt64.self)
      var w = 0
      let n = PageGeometry.pageSize / 8
      while w < n && words[w] == 0xaaaa_aaaa_aaaa_aaaa { w &+= 1 }
      if w == n { continue }
      reportPoison(q, a)
    }
  }

  @inline(never)
  func reportPoison(_ pfn: Int, _ page: UnsafeMutableRawPointer) {
    let bytes = page.assumingMemoryBound(to: UInt8.self)
    var first = 0
    while bytes[first] == PageAllocator.poisonByte { first += 1 }
    var last = PageGeometry.pageSize - 1
    while bytes[last] == PageAllocator.poisonByte { last -= 1 }
    let diff = bytes[first] ^ PageAllocator.poisonByte
    let singleBit = first == last && diff.nonzeroBitCount == 1
    let reason = singleBit ? "pagealloc: single bit error" : "pagealloc: memory corruption"
    let dump = PoisonCorruption.hexDump(UnsafeRawPointer(page), from: first, through: last)
    // dump_stack(): the allocation path that found it (this function and the check left out).
    let trace = cpa_depot_capture(2)
    let corruption = PoisonCorruption(
      firstOffset: first, lastOffset: last, singleBitError: singleBit, hexDump: dump,
      callTrace: trace > CPA_DEPOT_FAILURE ? PageOwnerStack(handle: trace) : nil)
    reportBad(pfn, .poisonCorrupted, reason, "alloc", quarantine: false, corruption: corruption)
  }
}

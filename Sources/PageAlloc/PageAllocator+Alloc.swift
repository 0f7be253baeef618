import Glibc
import Synchronization

extension PageAllocator {
  /// Allocates a block of `2^order` pages (`alloc_pages()`): the head's refcount is 1 and
  /// the tails' 0, or, with `.comp`, a compound page.
  ///
  /// The zonelist is walked from the highest zone the flags allow down (Movable -> Normal ->
  /// DMA32 -> DMA), first against each zone's low watermark, then against its min
  /// watermark less the reserves `.high` (GFP_ATOMIC) may use. PageAlloc has no reclaim and
  /// no compaction: a request that finds every zone below its watermark, or no free block
  /// of the order, returns `nil` with a warn_alloc report (unless `.noWarn`). A request that
  /// may reclaim (`.directReclaim`, as in `.kernel`) first drains every CPU's pcp lists and
  /// tries once more, as the kernel's direct-reclaim path does when reclaim frees nothing.
  ///
  /// - Complexity: O(1) from a per-CPU list; O(MAX_PAGE_ORDER) from the buddy, plus
  ///   O(2^order) for `.comp`, `.zero` and page poisoning.
  @inlinable
  public func allocPages(order: Int, gfp: GFP) -> PFN? {
    guard let p = allocInternal(order, gfp, frozen: false) else { return nil }
    return PFN(p)
  }

  /// Allocates a block whose pages all have refcount 0 (`__alloc_frozen_pages()`), to be
  /// freed with ``freeFrozenPages(_:order:)`` or ``freeContigFrozenRange(_:count:)``.
  @inlinable
  public func allocFrozenPages(order: Int, gfp: GFP) -> PFN? {
    guard let p = allocInternal(order, gfp, frozen: true) else { return nil }
    return PFN(p)
  }

  /// `alloc_pages_bulk()`: up to `count` order-0 pages, appended to `into`. Returns how many
  /// were allocated (fewer when memory runs out).
  @discardableResult
  public func allocPagesBulk(count: Int, gfp: GFP, into pages: inout [PFN]) -> Int {
    var n = 0
    while n < count {
      guard let p = allocInternal(0, gfp.union(.noWarn), frozen: false) else { break }
      pages.append(PFN(p))
      n += 1
    }
    return n
  }

  @inlinable
  func allocInternal(_ order: Int, _ gfp: GFP, frozen: Bool) -> Int? {
    if _slowPath(order < 0 || order > PageGeometry.maxOrder) {
      reportAllocFailure(order, gfp)
      return nil
    }
    if _slowPath(faultsEnabled.load(ordering: .relaxed)) && shouldInjectFailure(order, gfp) {
      // prepare_alloc_pages() fails before __alloc_frozen_pages() traces: no mm_page_alloc.
      reportAllocFailure(order, gfp, injected: true)
      return nil
    }
    let mt = gfp.migrateType.rawValue
    let highest = gfp.highestZone.rawValue
    // The common case first, kept small: the preferred zone above its low watermark.
    let first = Int(zonelists[highest &* 4])
    if _fastPath(first >= 0) {
      let z = zones + first
      if watermarkOK(z, order, z.pointee.wmarkLow, highest), let pfn = rmqueueTop(z, first, order, mt) {
        prepNewPage(pfn, order, gfp, frozen: frozen)
        tracePageAlloc(pfn, order, mt, gfp)
        return pfn
      }
    }
    return allocSlowWalk(order, gfp, frozen: frozen, mt, highest)
  }

  /// The rest of the zonelist walk of ``allocInternal(_:_:frozen:)``: the first pass from
  /// the second zone on (the first was tried), then the min-watermark pass over all.
  @usableFromInline @inline(never)
  func allocSlowWalk(_ order: Int, _ gfp: GFP, frozen: Bool, _ mt: Int, _ highest: Int) -> Int? {
    var pass = 0
    var drained = false
    while pass < 2 {
      var i = pass == 0 ? 1 : 0
      while i < 4 {
        let zi = Int(zonelists[highest &* 4 &+ i])
        if zi < 0 { break }
        let z = zones + zi
        let mark = pass == 0 ? z.pointee.wmarkLow : reserveMark(z.pointee.wmarkMin, gfp)
        if watermarkOK(z, order, mark, highest) {
          if let pfn = rmqueueTop(z, zi, order, mt) {
            prepNewPage(pfn, order, gfp, frozen: frozen)
            tracePageAlloc(pfn, order, mt, gfp)
            return pfn
          }
        }
        i &+= 1
      }
      pass &+= 1
      if pass == 2 && !drained && gfp.contains(.directReclaim) {
        // __alloc_pages_direct_reclaim(): when reclaim frees nothing, the kernel drains
        // every CPU's pcp lists once and retries. There is no reclaim here, but the pages
        // other CPUs hold on their pcp lists are free memory all the same.
        drained = true
        if pcpPageCount > 0 {
          drainAllPages()
          pass = 1
        }
      }
    }
    reportAllocFailure(order, gfp)
    tracePageAlloc(nil, order, mt, gfp)
    return nil
  }

  /// The min watermark less the reserves the request may use (`__zone_watermark_ok()`'s
  /// ALLOC_MIN_RESERVE and ALLOC_NON_BLOCK discounts).
  @inlinable @inline(__always)
  func reserveMark(_ min: Int, _ gfp: GFP) -> Int {
    var m = min
    if gfp.contains(.high) {
      m &-= m / 2
      if !gfp.contains(.directReclaim) { m &-= m / 4 }
    }
    return m
  }

  /// `zone_watermark_fast()`: free pages less the request must stay above the mark plus the
  /// lowmem reserve. (The kernel's extra check that a block of the order is free is left to
  /// the free lists themselves: rmqueue fails and the next zone is tried.)
  @inlinable @inline(__always)
  func watermarkOK(_ z: UnsafeMutablePointer<Zone>, _ order: Int, _ mark: Int, _ highest: Int) -> Bool {
    let free = z.pointee.nrFreePages.load(ordering: .relaxed) &- (1 &<< order) &+ 1
    return free > mark &+ z.pointee.lowmemReserve[highest]
  }

  /// `rmqueue()`: the per-CPU list for pcp orders, else the buddy under the zone lock.
  @inlinable @inline(__always)
  func rmqueueTop(_ z: UnsafeMutablePointer<Zone>, _ zi: Int, _ order: Int, _ mt: Int) -> Int? {
    if pcpAllowedOrder(order) {
      if let p = rmqueuePcplist(z, zi, order, mt) { return p }
    }
    return rmqueueBuddy(z, order, mt)
  }

  /// `rmqueue_buddy()`.
  @inlinable
  func rmqueueBuddy(_ z: UnsafeMutablePointer<Zone>, _ order: Int, _ mt: Int) -> Int? {
    z.pointee.lock.lock()
    let p = rmqueue(z, order, mt)
    if let p {
      memMap.presentRecord(p).pointee.flags.store(PG.word(flags: 0, order: order), ordering: .relaxed)
      z.pointee.pgalloc = z.pointee.pgalloc &+ (1 &<< order)
    }
    z.pointee.lock.unlock()
    return p
  }

  /// `rmqueue_pcplist()`: pops the head of this CPU's list, refilling it from the buddy in
  /// a batch when empty. Returns nil when the pcp lock is busy (the caller then takes the
  /// zone lock path) or the zone has nothing.
  @inlinable @inline(__always)
  func rmqueuePcplist(_ z: UnsafeMutablePointer<Zone>, _ zi: Int, _ order: Int, _ mt: Int) -> Int? {
    let pcp = localPcp(zi)
    if _slowPath(!pcp.pointee.lock.tryLock()) { return nil }
    pcp.pointee.freeCount = pcp.pointee.freeCount &>> 1
    let l = pcp.pointee.lists + orderToPindex(mt, order)
    if _slowPath(l.pointee.head == PageRecord.nilLink) {
      if !pcpRefill(z, pcp, l, order, mt) {
        pcp.pointee.lock.unlock()
        return nil
      }
    }
    let pfn = Int(l.pointee.head)
    let r = memMap.presentRecord(pfn)
    let next = r.pointee.next
    l.pointee.head = next
    if next != PageRecord.nilLink {
      memMap.presentRecord(Int(next)).pointee.prev = PageRecord.nilLink
    } else {
      l.pointee.tail = PageRecord.nilLink
    }
    l.pointee.count = l.pointee.count &- 1
    r.pointee.flags.store(PG.word(flags: 0, order: order), ordering: .relaxed)
    pcp.pointee.count = pcp.pointee.count &- (1 &<< order)
    pcp.pointee.pgalloc = pcp.pointee.pgalloc &+ (1 &<< order)
    pcp.pointee.lock.unlock()
    return pfn
  }

  /// The refill half of `rmqueue_pcplist()` (`rmqueue_bulk()`): moves a batch of blocks
  /// from the buddy to the empty pcp list `l`, under the zone lock. Returns false when the
  /// zone had none. Out of line: the common case pops a block without refilling.
  @usableFromInline @inline(never)
  func pcpRefill(
    _ z: UnsafeMutablePointer<Zone>, _ pcp: UnsafeMutablePointer<PerCPUPages>, _ l: UnsafeMutablePointer<FreeList>,
    _ order: Int, _ mt: Int
  ) -> Bool {
    let n = nrPcpAlloc(pcp, z, order)
    z.pointee.lock.lock()
    var got = 0
    while got < n {
      guard let b = rmqueue(z, order, mt) else { break }
      pcpAddTail(l, b, order)
      got &+= 1
    }
    z.pointee.lock.unlock()
    pcp.pointee.count = pcp.pointee.count &+ (got &<< order)
    pcp.pointee.refills = pcp.pointee.refills &+ 1
    return got != 0
  }

  /// `nr_pcp_alloc()`: how many blocks a refill takes. Doubles (alloc_factor) while
  /// allocations repeat without frees, bounded by the room left below `high`; high orders
  /// take `batch >> order` blocks, at least 2.
  @inlinable
  func nrPcpAlloc(_ pcp: UnsafeMutablePointer<PerCPUPages>, _ z: UnsafeMutablePointer<Zone>, _ order: Int) -> Int {
    let base = pcp.pointee.batch
    let high = pcp.pointee.high
    if high == 0 { return 1 }
    var batch = base
    if pcp.pointee.highMin != pcp.pointee.highMax && !zoneBelowHigh(z) {
      let room = max(high &- pcp.pointee.count &- base, base)
      batch = base &<< pcp.pointee.allocFactor
      if batch <= room && pcp.pointee.allocFactor < pcpBatchScaleMax { pcp.pointee.allocFactor = pcp.pointee.allocFactor &+ 1 }
      batch = min(batch, room)
    }
    if order > 0 { batch = max(batch &>> order, 2) }
    return batch
  }

  /// ZONE_BELOW_HIGH, computed instead of kept as a flag.
  @inlinable @inline(__always)
  func zoneBelowHigh(_ z: UnsafeMutablePointer<Zone>) -> Bool {
    z.pointee.nrFreePages.load(ordering: .relaxed) < z.pointee.wmarkHigh
  }

  /// Puts a block on a pcp list's tail (a refill: `rmqueue_bulk()` adds at the tail).
  @inlinable @inline(__always)
  func pcpAddTail(_ l: UnsafeMutablePointer<FreeList>, _ pfn: Int, _ order: Int) {
    let r = memMap.presentRecord(pfn)
    r.pointee.flags.store(PG.word(flags: PG.pcp, order: order), ordering: .relaxed)
    linkTail(l, pfn, r)
  }

  /// Puts a block on a pcp list's head (a free: the hot end).
  @inlinable @inline(__always)
  func pcpAddHead(_ l: UnsafeMutablePointer<FreeList>, _ pfn: Int, _ order: Int) {
    let r = memMap.presentRecord(pfn)
    r.pointee.flags.store(PG.word(flags: PG.pcp, order: order), ordering: .relaxed)
    linkHead(l, pfn, r)
  }

  /// Pops the oldest block (the tail) of a pcp list.
  @inlinable @inline(__always)
  func pcpPopTail(_ l: UnsafeMutablePointer<FreeList>) -> Int {
    let pfn = Int(l.pointee.tail)
    let r = memMap.presentRecord(pfn)
    let prev = r.pointee.prev
    l.pointee.tail = prev
    if prev != PageRecord.nilLink {
      memMap.presentRecord(Int(prev)).pointee.next = PageRecord.nilLink
    } else {
      l.pointee.head = PageRecord.nilLink
    }
    l.pointee.count = l.pointee.count &- 1
    return pfn
  }

  /// `prep_new_page()` / `post_alloc_hook()`: refcount, compound state, zeroing, poison
  /// check. The head's flag word already holds the order.
  @inlinable @inline(__always)
  func prepNewPage(_ pfn: Int, _ order: Int, _ gfp: GFP, frozen: Bool) {
    let r = memMap.presentRecord(pfn)
    if _slowPath(gfp.contains(.comp) && order > 0) {
      r.pointee.flags.store(PG.word(flags: PG.head, order: order), ordering: .relaxed)
      var t = r + 1
      let end = r + (1 &<< order)
      while t < end {
        t.pointee.flags.store(PG.tail, ordering: .relaxed)
        t += 1
      }
    }
    r.pointee.refcount.store(frozen ? 0 : 1, ordering: .relaxed)
    if _slowPath(poisoning) { checkPoison(pfn, order) }
    if _slowPath(gfp.contains(.zero)), let a = arena.address(of: pfn) {
      memset(a, 0, PageGeometry.pageSize &<< order)
    }
  }

  /// The poison byte of CONFIG_PAGE_POISONING (PAGE_POISON).
  static let poisonByte: UInt8 = 0xaa

  @usableFromInline @inline(never)
  func checkPoison(_ pfn: Int, _ order: Int) {
    for i in 0..<(1 << order) {
      guard let a = arena.address(of: pfn + i) else { return }
      let words = a.assumingMemoryBound(to: UInt64.self)
      var ok = true
      for w in 0..<(PageGeometry.pageSize / 8) where words[w] != 0xaaaa_aaaa_aaaa_aaaa {
        ok = false
        break
      }
      if !ok {
        reportBad(pfn + i, .poisonCorrupted, "pagealloc: memory corruption", "alloc", quarantine: false)
      }
    }
  }

  @usableFromInline @inline(never)
  func fillPoison(_ pfn: Int, _ count: Int) {
    guard let a = arena.address(of: pfn) else { return }
    memset(a, Int32(PageAllocator.poisonByte), count * PageGeometry.pageSize)
  }
}

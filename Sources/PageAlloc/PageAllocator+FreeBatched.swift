// A batched free of a list of pages: `folios_put()` handing the pages whose last reference
// it dropped to `free_unref_folios()`, the path that fires mm_page_free_batched.

extension PageAllocator {
  /// Drops one reference to each page of `pages` (heads of blocks of `order`) and frees,
  /// as one batch, those whose count reached zero: `folios_put()` and
  /// `free_unref_folios()`, as the kernel frees LRU pages.
  ///
  /// First every page is prepared (`__free_pages_prepare()`: mm_page_free, the checks; a
  /// bad page is reported and left out), and pages of an order the pcp lists do not take
  /// go straight to the buddy. Then, page by page in the order given, each goes onto this
  /// CPU's pcp list with `free_frozen_page_commit()` under one pcp lock per zone, traced
  /// with mm_page_free_batched (printed `order=0` whatever the order, as the kernel's
  /// TP_printk does). A page in an isolated pageblock, or any page when the pcp lock is
  /// busy, goes to the buddy instead, without that event. A page that is not the head of
  /// an allocated block of `order` is reported as ``freePages(_:order:)`` reports it.
  ///
  /// In a trace the batch therefore shows all its mm_page_free lines first, then its
  /// mm_page_free_batched lines.
  public func freePagesBatched(_ pages: [PFN], order: Int = 0) {
    guard order >= 0 && order <= PageGeometry.maxOrder else {
      for p in pages { freePages(p, order: order) }
      return
    }
    // Phase 1: drop the references and prepare; keep the pcp-bound blocks.
    var kept: [(pfn: Int, zone: Int)] = []
    kept.reserveCapacity(pages.count)
    for pfn in pages {
      let p = pfn.value
      guard let (r, zi) = resolve(p, "freePagesBatched") else { continue }
      let w = r.pointee.flags.load(ordering: .relaxed)
      if _slowPath(w & (PG.freeMask | PG.tail | PG.quarantined) != 0 || PG.order(w) != order) {
        classifyBadFree(p, w, .head(order: order), "freePagesBatched")
        continue
      }
      let old = r.pointee.refcount.wrappingSubtract(1, ordering: .acquiringAndReleasing).oldValue
      if old != 1 {
        if old <= 0 { refcountUnderflow(p, r, "freePagesBatched") }
        continue
      }
      guard prepareBlock(p, order, zi, "freePagesBatched") else { continue }
      if !pcpAllowedOrder(order) {
        zoneFreeBlock(zones + zi, p, order)
        continue
      }
      kept.append((p, zi))
    }
    // Phase 2: onto the pcp, one lock per run of pages of the same zone.
    var locked: UnsafeMutablePointer<PerCPUPages>? = nil
    var lockedZone = -1
    for (p, zi) in kept {
      var mt = memMap.freeListTypeRaw(p)
      let z = zones + zi
      if zi != lockedZone || mt == MigrateType.isolate.rawValue {
        locked?.pointee.lock.unlock()
        locked = nil
        lockedZone = -1
        if mt == MigrateType.isolate.rawValue {
          zoneFreeBlock(z, p, order)
          continue
        }
        let pcp = localPcp(zi)
        if !pcp.pointee.lock.tryLock() {
          zoneFreeBlock(z, p, order)
          continue
        }
        locked = pcp
        lockedZone = zi
      }
      // HighAtomic and CMA blocks go on the Movable list.
      if mt >= MigrateType.pcpTypes { mt = MigrateType.movable.rawValue }
      traceFreeBatched(p)
      freeCommit(z, locked.unsafelyUnwrapped, p, mt, order)
    }
    locked?.pointee.lock.unlock()
  }
}

// `verify()`: one walk over every free list, pcp list and page record that checks the
// allocator's invariants together. The kernel has no such walk; it checks pieces of them
// where it touches a page (`VM_BUG_ON_PAGE()`, `check_new_page()`, `free_page_is_bad()`).

/// A broken allocator invariant, found by ``PageAllocator/verify()``.
public struct VerificationError: Error, CustomStringConvertible, Sendable {
  /// The family of invariants ``PageAllocator/verify()`` checks: what broke, for a caller
  /// that must tell them apart without reading ``message``.
  public enum Kind: Sendable, Hashable {
    /// A zone free list: a link, its tail, a block's flags, refcount, alignment, zone,
    /// section or migratetype, or a cycle.
    case freeList
    /// A pcp list: the same checks as for free lists.
    case pcpList
    /// Two free blocks (buddy or pcp) cover the same page.
    case overlap
    /// Two free buddies that `__free_one_page()` would have merged are apart.
    case unmerged
    /// A page outside the lists: inside a free block but not clean, flagged free but on
    /// no list, or with a negative refcount.
    case pageState
    /// A counter disagrees with the lists it counts: `nr_free`, NR_FREE_PAGES, a pcp
    /// count.
    case accounting
    /// The quarantine count disagrees with the pages flagged quarantined.
    case quarantine
    /// An invariant of a structure built on the allocator (VMalloc's areas).
    case external
  }

  public var kind: Kind
  public var message: String
  /// A broken invariant described by `message`; other structures built on the allocator
  /// (VMalloc's areas) report theirs with the same error, of kind ``Kind/external``.
  public init(message: String, kind: Kind = .external) {
    self.kind = kind
    self.message = message
  }
  public var description: String { "verify: " + message }
}

extension PageAllocator {
  /// Walks every free list, pcp list and page record and throws a descriptive
  /// ``VerificationError`` on the first broken invariant, its ``VerificationError/kind``
  /// naming the family:
  ///
  /// - every listed block is a present, aligned, free (`PageBuddy` or pcp) head of the
  ///   right order, with refcount 0, inside one zone and one section, and on the list of its
  ///   pageblock's type; list links and counts (`nr_free`, NR_FREE_PAGES, pcp count) agree;
  /// - no two free blocks overlap;
  /// - no two free buddies that the kernel would merge are left unmerged;
  /// - every page inside a free block is clean (no flags, refcount 0); no page outside
  ///   one is flagged free or has a negative refcount; the quarantine count matches.
  ///
  /// Takes every pcp lock and zone lock, so other threads wait while it runs.
  /// - Complexity: O(pages).
  public func verify() throws(VerificationError) {
    for i in 0..<(cpuCount * zoneCount) { pcp(i).pointee.lock.lock() }
    for i in 0..<zoneCount { zones[i].lock.lock() }
    defer {
      for i in 0..<zoneCount { zones[i].lock.unlock() }
      for i in 0..<(cpuCount * zoneCount) { pcp(i).pointee.lock.unlock() }
    }
    try verifyLocked()
  }

  func verifyLocked() throws(VerificationError) {
    func fail(_ kind: VerificationError.Kind, _ s: String) -> VerificationError {
      VerificationError(message: s, kind: kind)
    }
    let base = memMap.basePFN
    let span = memMap.endPFN - base
    var covered = [UInt64](repeating: 0, count: (span + 63) / 64)
    var heads = [UInt64](repeating: 0, count: (span + 63) / 64)
    func test(_ a: [UInt64], _ p: Int) -> Bool { a[(p - base) >> 6] & (1 << UInt64((p - base) & 63)) != 0 }
    func set(_ a: inout [UInt64], _ p: Int) { a[(p - base) >> 6] |= 1 << UInt64((p - base) & 63) }

    func checkBlock(_ p: Int, _ o: Int, _ z: Int, _ what: String) throws(VerificationError) {
      let list: VerificationError.Kind = what == "pcp" ? .pcpList : .freeList
      let zz = zones + z
      guard p >= zz.pointee.start, p + (1 << o) <= zz.pointee.end else {
        throw fail(list, "\(what) block \(PFN(p)) order \(o) crosses or lies outside zone \(zz.pointee.kind)")
      }
      guard p & ((1 << o) - 1) == 0 else { throw fail(list, "\(what) block \(PFN(p)) is not aligned to order \(o)") }
      guard memMap.record(p) != nil else { throw fail(list, "\(what) block \(PFN(p)) is in a memmap hole") }
      guard memMap.sectionEnd(p) >= p + (1 << o) else {
        throw fail(list, "\(what) block \(PFN(p)) order \(o) crosses a section boundary")
      }
      for q in p..<(p + (1 << o)) {
        if test(covered, q) {
          throw fail(.overlap, "\(what) block \(PFN(p)) order \(o) overlaps another free block at \(PFN(q))")
        }
        set(&covered, q)
      }
      set(&heads, p)
    }

    var totalQuarantined = 0
    for zi in 0..<zoneCount {
      let z = zones + zi
      var nrFree = 0
      for o in 0...PageGeometry.maxOrder {
        for mt in 0..<MigrateType.count {
          let l = z.pointee.lists + listIndex(o, mt)
          var p = l.pointee.head
          var prev = PageRecord.nilLink
          var n = 0
          while p != PageRecord.nilLink {
            let pfn = Int(p)
            guard memMap.record(pfn) != nil else {
              throw fail(.freeList, "free list \(z.pointee.kind)/\(o)/\(mt) links to absent pfn \(PFN(pfn))")
            }
            try checkBlock(pfn, o, zi, "free")
            let r = memMap.presentRecord(pfn)
            let w = r.pointee.flags.load(ordering: .relaxed)
            guard w == PG.word(flags: PG.buddy, order: o) else {
              throw fail(.freeList, "free block \(PFN(pfn)) on the order-\(o) list has flags 0x\(String(w, radix: 16))")
            }
            let rc = r.pointee.refcount.load(ordering: .relaxed)
            guard rc == 0 else { throw fail(.freeList, "free page \(PFN(pfn)) has a reference (_refcount \(rc))") }
            guard r.pointee.prev == prev else {
              throw fail(.freeList, "free list \(z.pointee.kind)/\(o)/\(mt): bad prev link at \(PFN(pfn))")
            }
            var b = pfn
            repeat {
              let t = memMap.freeListTypeRaw(b)
              guard t == mt else {
                throw fail(
                  .freeList,
                  "free block \(PFN(pfn)) order \(o) is on the \(MigrateType(rawValue: mt)!) list but its pageblock \(PFN(b)) is \(MigrateType(rawValue: t)!)"
                )
              }
              b += PageGeometry.pageblockPages
            } while b < pfn + (1 << o)
            n += 1
            guard n <= z.pointee.spanned else {
              throw fail(.freeList, "free list \(z.pointee.kind)/\(o)/\(mt) has a cycle")
            }
            prev = p
            p = r.pointee.next
          }
          guard l.pointee.tail == prev else {
            throw fail(.freeList, "free list \(z.pointee.kind)/\(o)/\(mt): tail link is wrong")
          }
          guard n == l.pointee.count else {
            throw fail(
              .accounting,
              "nr_free of \(z.pointee.kind) order \(o) \(MigrateType(rawValue: mt)!) is \(l.pointee.count) but the list holds \(n)"
            )
          }
          if mt != MigrateType.isolate.rawValue { nrFree += n << o }
        }
      }
      let nf = z.pointee.nrFreePages.load(ordering: .relaxed)
      guard nf == nrFree else {
        throw fail(.accounting, "NR_FREE_PAGES of \(z.pointee.kind) is \(nf) but the lists hold \(nrFree)")
      }
      for cpu in 0..<cpuCount {
        let pc = pcp(cpu * zoneCount + zi)
        var pages = 0
        for li in 0..<PCPList.count {
          let o = pindexToOrder(li)
          var p = pc.pointee.lists[li].head
          var prev = PageRecord.nilLink
          var n = 0
          while p != PageRecord.nilLink {
            let pfn = Int(p)
            guard memMap.record(pfn) != nil else { throw fail(.pcpList, "pcp list links to absent pfn \(PFN(pfn))") }
            try checkBlock(pfn, o, zi, "pcp")
            let r = memMap.presentRecord(pfn)
            let w = r.pointee.flags.load(ordering: .relaxed)
            guard w == PG.word(flags: PG.pcp, order: o) else {
              throw fail(.pcpList, "pcp block \(PFN(pfn)) on the order-\(o) list has flags 0x\(String(w, radix: 16))")
            }
            guard r.pointee.refcount.load(ordering: .relaxed) == 0 else {
              throw fail(.pcpList, "free pcp page \(PFN(pfn)) has a reference")
            }
            guard r.pointee.prev == prev else { throw fail(.pcpList, "pcp list: bad prev link at \(PFN(pfn))") }
            n += 1
            guard n <= z.pointee.spanned else { throw fail(.pcpList, "pcp list has a cycle") }
            pages += 1 << o
            prev = p
            p = r.pointee.next
          }
          guard pc.pointee.lists[li].tail == prev, pc.pointee.lists[li].count == n else {
            throw fail(.pcpList, "pcp list \(li) of CPU \(cpu) zone \(z.pointee.kind): tail or count is wrong")
          }
        }
        guard pages == pc.pointee.count else {
          throw fail(
            .accounting,
            "pcp count of CPU \(cpu) zone \(z.pointee.kind) is \(pc.pointee.count) but its lists hold \(pages)")
        }
      }

      // Unmerged buddies.
      for o in 0..<PageGeometry.maxOrder {
        for mt in 0..<MigrateType.count {
          var p = z.pointee.lists[listIndex(o, mt)].head
          while p != PageRecord.nilLink {
            let pfn = Int(p)
            let b = pfn ^ (1 << o)
            if isBuddy(z, b, o) {
              let bt = memMap.freeListTypeRaw(b)
              let mergeable =
                o < PageGeometry.pageblockOrder || bt == mt
                || (bt < MigrateType.pcpTypes && mt < MigrateType.pcpTypes)
              if mergeable { throw fail(.unmerged, "unmerged buddies \(PFN(pfn)) and \(PFN(b)) at order \(o)") }
            }
            p = memMap.presentRecord(pfn).pointee.next
          }
        }
      }

      // Every record of the zone.
      var p = z.pointee.start
      while p < z.pointee.end {
        guard let r = memMap.record(p) else {
          p = memMap.sectionEnd(p)
          continue
        }
        let w = r.pointee.flags.load(ordering: .relaxed)
        let rc = r.pointee.refcount.load(ordering: .relaxed)
        if test(covered, p) {
          if !test(heads, p) && (w != 0 || rc != 0) {
            throw fail(
              .pageState, "page \(PFN(p)) inside a free block has flags 0x\(String(w, radix: 16)) _refcount \(rc)")
          }
        } else {
          if w & PG.freeMask != 0 { throw fail(.pageState, "page \(PFN(p)) is flagged free but is on no list") }
          if rc < 0 { throw fail(.pageState, "page \(PFN(p)) has a negative _refcount \(rc)") }
        }
        if w & PG.quarantined != 0 { totalQuarantined += 1 }
        p += 1
      }
    }
    let q = quarantined.load(ordering: .relaxed)
    guard q == totalQuarantined else {
      throw fail(.quarantine, "quarantine count is \(q) but \(totalQuarantined) pages are flagged quarantined")
    }
  }
}

import PageAlloc
import _PageAllocUtilities

// The driver's steps: each op applied to the allocator, and the held set kept in step.

extension APISequence {
  // MARK: - Steps

  @discardableResult
  package mutating func step(_ op: Op) -> Step {
    let a = allocator
    switch op {
    case .alloc(let order, let gfp, let frozen):
      let p = frozen ? a.allocFrozenPages(order: order, gfp: gfp) : a.allocPages(order: order, gfp: gfp)
      let call: Call = frozen ? .allocFrozen : .alloc
      guard let p else { return Step(call, .failed) }
      hold(.block(p, order: order, frozen: frozen, compound: gfp.contains(.comp) && order > 0))
      return Step(call)

    case .allocBulk(let count, let gfp):
      var pages: [PFN] = []
      let got = a.allocPagesBulk(count: count, gfp: gfp, into: &pages)
      if !pages.isEmpty { hold(.pages(pages)) }
      return Step(.allocBulk, got < count ? .failed : .done)

    case .allocContig(let count, let gfp, let frozen):
      let p = frozen ? a.allocContigFrozenPages(count: count, gfp: gfp) : a.allocContigPages(count: count, gfp: gfp)
      guard let p else { return Step(.contigPages, .failed) }
      hold(Self.contiguous(p, count, gfp, frozen))
      return Step(.contigPages)

    case .allocContigRange(let range, let gfp, let frozen):
      do {
        if frozen { try a.allocContigFrozenRange(range, gfp: gfp) } else { try a.allocContigRange(range, gfp: gfp) }
      } catch {
        if case .busy = error { return Step(.contigRange, .busy) }
        return Step(.contigRange, .invalid)
      }
      hold(Self.contiguous(range.lowerBound, range.count, gfp, frozen))
      return Step(.contigRange)

    case .split(let pick):
      guard let i = held.index(pick), case .block(let p, let o, false, false) = held[i], o > 0 else { return Step(nil) }
      a.splitPage(p, order: o)
      held.replace(at: i, with: .run(p, count: 1 << o, frozen: false))
      return Step(.split)

    case .getPut(let pick, let page):
      // A movable block may move under a pfn read a moment before: not for get/put.
      guard let i = held.index(pick), !held[i].isFrozen, !held[i].isMovable else { return Step(nil) }
      let q: PFN
      if case .block(let p, _, _, _) = held[i] { q = p } else { q = held[i].orderZeroPage(page)! }
      a.getPage(q)
      a.putPage(q)
      return Step(.getPut)

    case .speculativeGet(let pick):
      guard let i = held.index(pick), case .block(let p, let o, false, let compound) = held[i] else { return Step(nil) }
      a.getPage(p)
      a.freePages(p, order: o)
      if !compound { held.replace(at: i, with: .run(p, count: 1, frozen: false)) }
      return Step(compound ? .getFreeCompound : .getFree)

    case .get(let pick, let page):
      guard let i = held.index(pick), !held[i].isFrozen, let q = held[i].orderZeroPage(page) else { return Step(nil) }
      a.getPage(q)
      held.addReference(q)
      return Step(.get)

    case .put(let pick):
      guard !held.references.isEmpty else { return Step(nil) }
      let keys = held.references.keys.sorted()
      let q = keys[pick.modulo(keys.count)]
      a.putPage(q)
      held.dropReference(q)
      return Step(.put)

    case .free(let pick, let way, let choice):
      guard let i = held.index(pick) else { return Step(nil) }
      return Step(release(held.remove(at: i), way: way, choice: choice))

    case .freeStretch(let pick, let page, let count, let way, let choice):
      guard let (stretch, frozen) = held.stretch(pick: pick, page: page, count: count) else { return Step(nil) }
      let start = stretch.lowerBound
      held.removeOrderZeroPages(Set(stretch))
      let call: Call
      switch way {
      case .other where !frozen:
        var pfns = Array(stretch)
        if choice & 1 == 1 {
          var g = SeededRandom(seed: choice)
          g.shuffle(&pfns)
        }
        a.freePagesBulk(pfns)
        call = .freePagesBulk
      case .perPage:
        for q in stretch { if frozen { a.freeFrozenPages(q, order: 0) } else { a.putPage(q) } }
        call = .freePerPage
      default:
        if frozen {
          a.freeContigFrozenRange(start, count: stretch.count)
        } else {
          a.freeContigRange(start, count: stretch.count)
        }
        call = frozen ? .freeContigFrozen : .freeContig
      }
      held.keepReferenced(stretch)
      return Step(call)

    case .freeScattered(let phase, let choice):
      let all = held.orderZeroPages(frozen: false).sorted()
      var pfns = all.enumerated().filter { ($0.offset + phase.modulo(3)) % 3 != 0 }.map(\.element)
      guard !pfns.isEmpty else { return Step(nil) }
      held.removeOrderZeroPages(Set(pfns))
      if choice & 1 == 1 {
        var g = SeededRandom(seed: choice)
        g.shuffle(&pfns)
      }
      a.freePagesBulk(pfns)
      held.keepReferenced(pfns)
      return Step(.freePagesBulk)

    case .drain:
      a.drainAllPages()
      return Step(.drain)

    case .setCPU(let cpu):
      PageAllocator.setThreadCPU(cpu)
      return Step(.setCPU)

    case .allocMovable(let order, let gfp):
      guard gfp.contains(.movable), (0...PageGeometry.maxOrder).contains(order) else { return Step(nil) }
      guard let h = movable.allocate(order: order, gfp: gfp) else { return Step(.allocMovable, .failed) }
      _ = pattern(h.id, write: true)
      hold(.movable(id: h.id, order: order))
      return Step(.allocMovable)

    case .compact(let c):
      switch c {
      case .zone(let order):
        a.compactZone(order: min(max(order, 1), PageGeometry.maxOrder))
        return Step(.compactZone)
      case .all:
        a.compactAll()
        return Step(.compactAll)
      case .proactive:
        a.compactProactively()
        return Step(.compactProactive)
      case .kcompactd:
        a.runKcompactd(timedOut: false)
        return Step(.kcompactd)
      }

    case .hostile(let h):
      hostile(h)
      return Step(.hostile)

    case .corrupt(let pick, let page, let flags, let way):
      guard let i = held.index(pick) else { return Step(nil) }
      let h = held.remove(at: i)
      let q: PFN
      switch h {
      case .block(let p, let o, _, _): q = p + page.modulo(1 << o)
      case .movable(let id, let o):
        guard let p = movable.pfn(of: MovablePageTable.Handle(id: id)) else { return Step(nil) }
        q = p + page.modulo(1 << o)
      default: q = h.orderZeroPage(page)!
      }
      a.setPageFlags(q, flags)
      _ = release(h, way: way, choice: 0)
      return Step(.corrupt)
    }
  }

  /// Frees everything held the well-behaved way: the extra references first, then each
  /// item with its ``FreeWay/plain`` call, last allocated first.
  package mutating func releaseAll() {
    for (q, r) in held.references.sorted(by: { $0.key < $1.key }) {
      for _ in 0..<r {
        allocator.putPage(q)
        held.dropReference(q)
      }
    }
    while let h = held.popLast() { _ = release(h, way: .plain, choice: 0) }
  }

  /// The item a contiguous allocation made: one compound block with `.comp`, else a run.
  static func contiguous(_ p: PFN, _ count: Int, _ gfp: GFP, _ frozen: Bool) -> Held {
    gfp.contains(.comp)
      ? .block(p, order: count.trailingZeroBitCount, frozen: frozen, compound: count > 1)
      : .run(p, count: count, frozen: frozen)
  }

  /// Frees `h`, already taken out of the held set (a run's kept ends go back in).
  mutating func release(_ h: Held, way: FreeWay, choice: UInt64) -> Call {
    let a = allocator
    switch h {
    case .block(let p, let o, false, _):
      if way == .other {
        a.putPage(p)
        return .putPage
      }
      a.freePages(p, order: o)
      return .freePages

    case .block(let p, let o, true, let compound):
      if way == .other && !compound {
        a.freeContigFrozenRange(p, count: 1 << o)
        return .freeContigFrozen
      }
      a.freeFrozenPages(p, order: o)
      return .freeFrozen

    case .run(let p, let n, let frozen):
      let call: Call
      var freed = p..<(p + n)
      switch way {
      case .part where n > 2:
        var g = SeededRandom(seed: choice)
        let a0 = 1 + g.below(n - 2)
        let k = 1 + g.below(n - a0 - 1)
        if frozen { a.freeContigFrozenRange(p + a0, count: k) } else { a.freeContigRange(p + a0, count: k) }
        held.append(.run(p, count: a0, frozen: frozen))
        held.append(.run(p + a0 + k, count: n - a0 - k, frozen: frozen))
        freed = (p + a0)..<(p + a0 + k)
        call = frozen ? .freeContigFrozenPart : .freeContigPart
      case .perPage where n <= 64:
        for q in freed { if frozen { a.freeFrozenPages(q, order: 0) } else { a.putPage(q) } }
        call = .freePerPage
      case .other where !frozen:
        a.freePagesBulk(Array(freed))
        call = .freePagesBulk
      default:
        if frozen { a.freeContigFrozenRange(p, count: n) } else { a.freeContigRange(p, count: n) }
        call = frozen ? .freeContigFrozen : .freeContig
      }
      if !frozen { held.keepReferenced(freed) }
      return call

    case .movable(let id, _):
      patternsChecked += 1
      if !pattern(id, write: false) { patternFailures += 1 }
      movable.free(MovablePageTable.Handle(id: id))
      return .freeMovable

    case .pages(var ps):
      let call: Call
      switch way {
      case .perPage:
        for q in ps { a.putPage(q) }
        call = .freePerPage
      case .other:
        var g = SeededRandom(seed: choice)
        g.shuffle(&ps)
        a.freePagesBulk(ps)
        call = .freePagesBulk
      default:
        ps.sort()
        a.freePagesBulk(ps)
        call = .freePagesBulk
      }
      held.keepReferenced(ps)
      return call
    }
  }

  mutating func hostile(_ h: Hostile) {
    let a = allocator
    switch h {
    case .freePages(let p, let o):
      damage(p..<(p + 1))
      a.freePages(p, order: o)
    case .freeFrozenPages(let p, let o):
      damage(p..<(p + 1))
      a.freeFrozenPages(p, order: o)
    case .putPage(let p):
      damage(p..<(p + 1))
      a.putPage(p)
    case .getPage(let p):
      damage(p..<(p + 1))
      a.getPage(p)
    case .splitPage(let p, let o):
      damage(p..<(p + 1))
      a.splitPage(p, order: o)
    case .freeContigRange(let p, let n):
      damage(p..<(p + max(n, 0)))
      a.freeContigRange(p, count: n)
    case .freeContigFrozenRange(let p, let n):
      damage(p..<(p + max(n, 0)))
      a.freeContigFrozenRange(p, count: n)
    case .freePagesBulk(let ps):
      for p in ps { damage(p..<(p + 1)) }
      a.freePagesBulk(ps)
    }
  }

  /// Holds what an allocation returned. Pages a hostile call freed from under an item can
  /// come back in a new allocation while the stale item is still held, and the stale
  /// item's release then frees them: a new item with a damaged page is damaged whole.
  mutating func hold(_ h: Held) {
    held.append(h)
    if !damagedPages.isEmpty && isDamaged(h) { markDamaged(h) }
  }

  /// The pages of a held item; a movable block's where its table has it now.
  package func pages(of h: Held) -> [PFN] {
    switch h {
    case .block(let p, let o, _, _): Array(p..<(p + (1 << o)))
    case .run(let p, let n, _): Array(p..<(p + n))
    case .pages(let ps): ps
    case .movable(let id, let o):
      movable.pfn(of: MovablePageTable.Handle(id: id)).map { Array($0..<($0 + (1 << o))) } ?? []
    }
  }

  /// The pfns of a held item that is one span (a page list is not): a movable block's
  /// where its table has it now (empty when the table has no block for it).
  func span(of h: Held) -> Range<Int>? {
    switch h {
    case .block(let p, let o, _, _): p.value..<(p.value + (1 << o))
    case .run(let p, let n, _): p.value..<(p.value + max(n, 0))
    case .pages: nil
    case .movable(let id, let o):
      movable.pfn(of: MovablePageTable.Handle(id: id)).map { $0.value..<($0.value + (1 << o)) } ?? 0..<0
    }
  }

  /// Whether a page of the held item is damaged.
  func isDamaged(_ h: Held) -> Bool {
    if case .pages(let ps) = h { return ps.contains { damagedPages.contains($0) } }
    return damagedPages.intersects(span(of: h)!)
  }

  /// Marks every page of the held item damaged.
  mutating func markDamaged(_ h: Held) {
    if case .pages(let ps) = h {
      for p in ps { damagedPages.insert(p.value..<(p.value + 1)) }
    } else {
      damagedPages.insert(span(of: h)!)
    }
  }

  /// Every page in use because of what is held, ascending (movable blocks where they are).
  package func allocatedPFNs() -> [PFN] {
    held.allocatedPFNs { self.movable.pfn(of: MovablePageTable.Handle(id: $0)) }
  }

  /// Records the pages of every held item with a page in `range` as damaged.
  mutating func damage(_ range: Range<PFN>) {
    let r = range.lowerBound.value..<max(range.lowerBound.value, range.upperBound.value)
    for h in held.items {
      let hit: Bool
      if case .movable = h {
        hit = span(of: h)!.overlaps(r)
      } else {
        hit = HeldSet.overlaps(h, range)
      }
      if hit { markDamaged(h) }
    }
  }
}

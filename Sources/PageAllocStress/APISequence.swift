import PageAlloc
import _PageAllocUtilities

/// A random sequence of API calls on one allocator, and the model of what the caller owns
/// (``HeldSet``) that keeps every well-formed call well-formed.
///
/// One driver serves every randomized check: the stress engine draws ``Op``s from its
/// generator, the API-sequence fuzzer and the property tests decode them from bytes
/// (``decode(_:hostile:)``), the differential oracle builds the same history on two
/// allocators. An op names its target by position (`pick` modulo the held items, `page`
/// modulo the item's pages), so any integers make a valid op, and the same ops applied to
/// two allocators in the same state pick the same pages. An op that fits nothing held
/// makes no call (``Step/call`` is nil).
///
/// Movable blocks (``Op/allocMovable(order:gfp:)``) are held through the driver's
/// `MovablePageTable` (``movable``), which follows them when compaction
/// (``Op/compact(_:)``), a contiguous range or a direct compaction moves them; each holds a
/// byte pattern (with memory behind the pages) checked when it is freed
/// (``patternFailures``).
///
/// ``Op/hostile(_:)`` and ``Op/corrupt(pick:page:flags:way:)`` are the deliberate misuse
/// the fuzzer adds; the model never relies on them. ``releaseAll()`` frees everything held
/// in the well-behaved way, after which (and a drain) every managed page is free or
/// quarantined, but for the ``damagedPages`` of held items a hostile call reached.
package struct APISequence {
  /// The API family one step called.
  package enum Call: CaseIterable, Hashable, Sendable {
    case alloc
    case allocFrozen
    case allocBulk
    case contigPages
    case contigRange
    case split
    case getPut
    case getFree
    case getFreeCompound
    case get
    case put
    case freePages
    case putPage
    case freeFrozen
    case freeContig
    case freeContigFrozen
    case freeContigPart
    case freeContigFrozenPart
    case freePerPage
    case freePagesBulk
    case drain
    case setCPU
    case allocMovable
    case freeMovable
    case compactZone
    case compactAll
    case compactProactive
    case kcompactd
    case hostile
    case corrupt

    /// The stress summary's name for it.
    package var name: String {
      switch self {
      case .alloc: "alloc"
      case .allocFrozen: "alloc-frozen"
      case .allocBulk: "alloc-bulk"
      case .contigPages: "contig-pages"
      case .contigRange: "contig-range"
      case .split: "split"
      case .getPut: "get-put"
      case .getFree: "get-free"
      case .getFreeCompound: "get-free-compound"
      case .get: "get"
      case .put: "put"
      case .freePages: "free-pages"
      case .putPage: "put-page"
      case .freeFrozen: "free-frozen"
      case .freeContig: "free-contig"
      case .freeContigFrozen: "free-contig-frozen"
      case .freeContigPart: "free-contig-part"
      case .freeContigFrozenPart: "free-contig-frozen-part"
      case .freePerPage: "free-per-page"
      case .freePagesBulk: "free-pages-bulk"
      case .drain: "drain"
      case .setCPU: "set-cpu"
      case .allocMovable: "alloc-movable"
      case .freeMovable: "free-movable"
      case .compactZone: "compact-zone"
      case .compactAll: "compact-all"
      case .compactProactive: "compact-proactive"
      case .kcompactd: "kcompactd"
      case .hostile: "hostile"
      case .corrupt: "corrupt"
      }
    }
  }

  /// How a step ended.
  package enum Outcome: Hashable, Sendable {
    case done
    /// An allocation returned nil, or the bulk allocator fewer pages than asked.
    case failed
    /// `allocContigRange` found a page of the range in use.
    case busy
    /// `allocContigRange` refused the range or the flags.
    case invalid
  }

  package struct Step: Hashable, Sendable {
    /// What was called; nil when the op fitted nothing held and no call was made.
    package var call: Call?
    package var outcome: Outcome = .done

    init(_ call: Call?, _ outcome: Outcome = .done) {
      self.call = call
      self.outcome = outcome
    }
  }

  /// The well-behaved ways of freeing a held item. A way that does not apply to the
  /// item's shape falls back to ``plain``.
  package enum FreeWay: Int, CaseIterable, Sendable {
    /// The call matching the allocation: `freePages`, `freeFrozenPages`,
    /// `freeContigRange`, `freeContigFrozenRange`, or `freePagesBulk` in pfn order.
    case plain
    /// The other valid call: `putPage` for a block, `freeContigFrozenRange` for a frozen
    /// non-compound block, `freePagesBulk` for a run, `freePagesBulk` in shuffled order for
    /// a page list.
    case other
    /// Page by page (`putPage`, or `freeFrozenPages` of order 0): runs of at most 64
    /// pages and page lists.
    case perPage
    /// A middle part of a run of three or more pages; both ends stay held.
    case part
  }

  /// A deliberate misuse on any pfn (outside every zone, in a hole, free, or held).
  package enum Hostile: Hashable, Sendable {
    case freePages(PFN, order: Int)
    case freeFrozenPages(PFN, order: Int)
    case putPage(PFN)
    case getPage(PFN)
    case splitPage(PFN, order: Int)
    case freeContigRange(PFN, count: Int)
    case freeContigFrozenRange(PFN, count: Int)
    case freePagesBulk([PFN])
  }

  /// The compaction an ``Op/compact(_:)`` runs.
  package enum Compaction: Hashable, Sendable {
    /// `compactZone(order:)`.
    case zone(order: Int)
    /// `compactAll()`.
    case all
    /// `compactProactively()`.
    case proactive
    /// `runKcompactd(timedOut: false)`: the work failed allocations woke it for.
    case kcompactd
  }

  package enum Op: Hashable, Sendable {
    /// `allocPages` / `allocFrozenPages`.
    case alloc(order: Int, gfp: GFP, frozen: Bool)
    /// `allocPagesBulk`.
    case allocBulk(count: Int, gfp: GFP)
    /// `allocContigPages` / `allocContigFrozenPages` (with `.comp`: one compound block).
    case allocContig(count: Int, gfp: GFP, frozen: Bool)
    /// `allocContigRange` / `allocContigFrozenRange`.
    case allocContigRange(Range<PFN>, gfp: GFP, frozen: Bool)
    /// `splitPage` of a held non-frozen, non-compound block of order > 0: it becomes a run.
    case split(pick: Int)
    /// `getPage` then `putPage` on a page of a held non-frozen item (a block's head).
    case getPut(pick: Int, page: Int)
    /// lib/test_free_pages.c: `getPage` on a held non-frozen block's head, then
    /// `freePages`: the tails go back now, and the reference keeps the head (as a one-page
    /// run; a compound block stays whole).
    case speculativeGet(pick: Int)
    /// `getPage` on a held order-0 page: the caller keeps the extra reference.
    case get(pick: Int, page: Int)
    /// `putPage` of one extra reference (picked in pfn order).
    case put(pick: Int)
    /// Frees a held item (`choice` draws the shuffle order and the part's bounds).
    case free(pick: Int, way: FreeWay, choice: UInt64)
    /// Frees up to `count` contiguous held order-0 pages from a picked one upwards, across
    /// items (a run and the split block next to it, say); the stretch stays frozen or not
    /// like its first page. ``FreeWay/other`` is `freePagesBulk`, shuffled when `choice` is
    /// odd; ``FreeWay/perPage`` page by page; the rest `freeContig(Frozen)Range`.
    case freeStretch(pick: Int, page: Int, count: Int, way: FreeWay, choice: UInt64)
    /// `freePagesBulk` of two thirds of the held non-frozen order-0 pages (those whose
    /// position in pfn order plus `phase` is not a multiple of 3), ascending, or shuffled
    /// when `choice` is odd.
    case freeScattered(phase: Int, choice: UInt64)
    case drain
    /// `PageAllocator.setThreadCPU`: which per-CPU page set this thread's calls use.
    case setCPU(Int?)
    /// A movable block with an owner (`MovablePageTable.allocate(order:gfp:)`), holding a
    /// pattern. `gfp` without `.movable` makes no call.
    case allocMovable(order: Int, gfp: GFP)
    /// A compaction; it may move any movable block, this driver's or another's.
    case compact(Compaction)
    case hostile(Hostile)
    /// A held page given a bad state (`setPageFlags`), then its item freed: `bad_page`.
    case corrupt(pick: Int, page: Int, flags: PageFlags, way: FreeWay)
  }

  /// The allocator the API-sequence fuzzer uses: small, so that verify() (which walks
  /// every page) stays cheap and inputs run by the thousand a second, with every boundary
  /// the checks care about. A DMA zone ending at pfn 1000, inside the pageblock 512..<1024
  /// it shares with the Normal zone; a Normal zone up to 4096 with a one-section memmap
  /// hole at 2048..<3072 between its two parts; 1024-page sections (the smallest); two
  /// CPUs; no memory behind the pages; every page of a block checked (`checkPages`). 3072
  /// pages present.
  package static let fuzzConfiguration = PageAllocator.Configuration(
    zones: [
      ZoneConfiguration(kind: .dma, pfns: PFN(0)..<PFN(1000)),
      ZoneConfiguration(kind: .normal, pfns: PFN(1000)..<PFN(4096)),
    ], cpuCount: 2, backing: .none, sectionPages: 1024, holes: [PFN(2048)..<PFN(3072)], checkPages: true)

  /// ``fuzzConfiguration`` without `checkPages`: the setting in which a free of a
  /// non-compound block reads its head only, whose bad frees must be contained as well.
  package static var fuzzConfigurationWithoutPageChecks: PageAllocator.Configuration {
    var c = fuzzConfiguration
    c.checkPages = false
    return c
  }

  package let allocator: PageAllocator
  package private(set) var held = HeldSet()
  /// The owner of this driver's movable blocks.
  package let movable: MovablePageTable
  /// Movable blocks whose pattern was not intact when they were freed (0 when migration
  /// carries every byte along).
  package private(set) var patternFailures = 0
  /// Movable blocks whose pattern was checked.
  package private(set) var patternsChecked = 0
  /// Told apart from other drivers' patterns.
  let salt: UInt64
  /// The pages of every held item a hostile call reached (a pfn in the item, for a range
  /// any overlap), and of every later allocation that got one of those pages back. The
  /// caller broke those allocations itself, so after ``releaseAll()`` the allocator owes
  /// nothing for them: an extra reference no one will put, a block head freed as an
  /// order-0 page leaving its tails behind, a stale item freeing pages that now belong to
  /// a new one, may keep them allocated. Every other managed page must come back free or
  /// quarantined.
  package private(set) var damagedPages: PFNBitSet

  package init(_ allocator: PageAllocator) {
    self.allocator = allocator
    damagedPages = PFNBitSet(allocator.pfnSpan)
    movable = MovablePageTable(allocator: allocator)
    salt = UInt64(UInt(bitPattern: ObjectIdentifier(movable).hashValue)) &* 0x9E37_79B9_7F4A_7C15
  }

  /// The pattern word of page `page` of movable block `id`.
  func patternWord(_ id: Int, _ page: Int) -> UInt64 {
    (salt ^ UInt64(truncatingIfNeeded: id)) &* 0xBF58_476D_1CE4_E5B9 &+ UInt64(truncatingIfNeeded: page)
  }

  /// Writes (`write`) or checks the pattern of movable block `id` through the table's
  /// pinned accessor: the first and last word of each page. True when intact (or when the
  /// allocator has no memory).
  func pattern(_ id: Int, write: Bool) -> Bool {
    movable.withPage(MovablePageTable.Handle(id: id)) { _, bytes in
      guard let bytes else { return true }
      for page in 0..<(bytes.count / PageGeometry.pageSize) {
        let w = patternWord(id, page)
        let first = page * PageGeometry.pageSize
        let last = first + PageGeometry.pageSize - 8
        if write {
          bytes.storeBytes(of: w, toByteOffset: first, as: UInt64.self)
          bytes.storeBytes(of: ~w, toByteOffset: last, as: UInt64.self)
        } else if bytes.load(fromByteOffset: first, as: UInt64.self) != w
          || bytes.load(fromByteOffset: last, as: UInt64.self) != ~w
        {
          return false
        }
      }
      return true
    } ?? false
  }

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

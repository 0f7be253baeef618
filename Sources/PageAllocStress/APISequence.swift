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
  package internal(set) var held = HeldSet()
  /// The owner of this driver's movable blocks.
  package let movable: MovablePageTable
  /// Movable blocks whose pattern was not intact when they were freed (0 when migration
  /// carries every byte along).
  package internal(set) var patternFailures = 0
  /// Movable blocks whose pattern was checked.
  package internal(set) var patternsChecked = 0
  /// Told apart from other drivers' patterns.
  let salt: UInt64
  /// The pages of every held item a hostile call reached (a pfn in the item, for a range
  /// any overlap), and of every later allocation that got one of those pages back. The
  /// caller broke those allocations itself, so after ``releaseAll()`` the allocator owes
  /// nothing for them: an extra reference no one will put, a block head freed as an
  /// order-0 page leaving its tails behind, a stale item freeing pages that now belong to
  /// a new one, may keep them allocated. Every other managed page must come back free or
  /// quarantined.
  package internal(set) var damagedPages: PFNBitSet

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

}

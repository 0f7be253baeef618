import PageAlloc
import _PageAllocUtilities
import CPageAllocShim
import Glibc
import Synchronization

/// Errors creating a ``VMalloc``.
public enum VMallocError: Error, Equatable, CustomStringConvertible {
  /// The allocator's backing is not `.memfd`: there is no file to map a second time.
  case needsMemfdBacking
  /// The address window could not be reserved.
  case reserveFailed(bytes: Int, errno: Int32)
  /// A configuration value is out of range.
  case badConfiguration(String)

  public var description: String {
    switch self {
    case .needsMemfdBacking: "vmalloc needs an allocator with backing .memfd"
    case .reserveFailed(let b, let e): "cannot reserve a \(b)-byte vmalloc window: \(String(cString: strerror(e)))"
    case .badConfiguration(let s): "bad vmalloc configuration: \(s)"
    }
  }
}

/// vmalloc over real memory (`mm/vmalloc.c`): virtually contiguous, writable buffers built
/// from a `PageAllocator`'s scattered pages.
///
/// The allocator's memory is a memfd. ``vmalloc(_:gfp:align:file:line:)`` takes pages with
/// the kernel's `vm_area_alloc_pages()` strategy (high orders first, each block split to
/// order-0 pages, then bulk order-0), picks a slot in a reserved `PROT_NONE` address window
/// (`AddressWindow`; one guard page after every area), and maps each physically
/// contiguous run of the pages there with one `mmap(MAP_SHARED | MAP_FIXED)` of the memfd.
/// The same bytes are then reachable through the vmalloc address and through
/// `PageAllocator.address(of:)` of each page. ``vfree(_:freePath:)`` puts `PROT_NONE`
/// back over the area, then gives the pages back with `PageAllocator.freePagesBulk(_:)`
/// (the series' patch 2/3) or, for comparison, one `__free_page` at a time.
///
/// Departures from the kernel: no lazy purge of freed areas (the unmap is immediate, one
/// `mmap` per area); no huge mappings; alignment is capped at the pageblock size; the
/// process's `vm.max_map_count` bounds how many areas can be live (see ``processMapBudget``
/// and <doc:VMallocOverRealMemory#The-map-count-limit>).
///
/// Thread safety: every method may be called from any thread. One lock guards the window's
/// free list and the area table; page allocation, `mmap` and the frees run outside it.
public final class VMalloc: @unchecked Sendable {
  /// How ``vfree(_:freePath:)`` gives the pages back.
  public enum FreePath: String, Sendable, CaseIterable {
    /// `free_pages_bulk()`: ascending runs freed as the largest aligned chunks (the series).
    case bulk
    /// One `__free_page()` per page (vfree before the series).
    case perPage
  }

  /// What an area is.
  public enum AreaKind: String, Sendable {
    /// Pages allocated by ``VMalloc/vmalloc(_:gfp:align:file:line:)``, freed by vfree.
    case vmalloc
    /// Caller-owned pages mapped by ``VMalloc/vmap(_:file:line:)``.
    case vmap
  }

  /// How to build a ``VMalloc``.
  public struct Configuration: Sendable {
    /// Bytes of address space to reserve (rounded up to pages). Default: four times the
    /// allocator's memory, at least 1 GiB.
    public var windowBytes: Int?
    /// Pre-fault every mapped page (`MAP_POPULATE`), like the kernel, which installs the
    /// page-table entries when it maps an area. Off: the first touch of each page faults.
    public var prefault: Bool
    /// The default free path of ``VMalloc/vfree(_:freePath:)``.
    public var freePath: FreePath
    /// At most this many mappings charged by this instance (nil: only the process budget).
    public var mapLimit: Int?

    public init(windowBytes: Int? = nil, prefault: Bool = true, freePath: FreePath = .bulk, mapLimit: Int? = nil) {
      self.windowBytes = windowBytes
      self.prefault = prefault
      self.freePath = freePath
      self.mapLimit = mapLimit
    }
  }

  /// One live area.
  struct Area: Sendable {
    /// First window page.
    var start: Int
    /// Pages mapped (the guard page follows).
    var pageCount: Int
    /// The window slot, guard and alignment padding included.
    var slot: Range<Int>
    var pages: [PFN]
    /// Mappings charged against the map-count budget.
    var charged: Int
    var kind: AreaKind
    var file: StaticString
    var line: UInt
  }

  struct State: Sendable {
    var window: AddressWindow
    /// Live areas by first window page.
    var areas: [Int: Area] = [:]
    var charged = 0
  }

  public let allocator: PageAllocator
  public let configuration: Configuration
  let state: LockedState<State>
  let fd: Int32
  let windowBase: UnsafeMutableRawPointer
  let windowPages: Int
  let mapLimit: Int
  let nrVmallocPages = Atomic<Int>(0)
  let failures = Atomic<Int>(0)
  let badCalls = Atomic<Int>(0)
  /// With debug_pagealloc: one plus the pfn last mapped at each window page, so the fault
  /// handler can name the page behind a stale vmalloc address (nil otherwise).
  let lastMapped: UnsafeMutablePointer<UInt32>?
  /// The window's region in the fault handler (-1: none).
  let faultRegion: Int32

  /// Creates a vmalloc over `allocator`, which must be backed by a memfd.
  public init(allocator: PageAllocator, configuration: Configuration = Configuration()) throws(VMallocError) {
    guard allocator.configuration.backing == .memfd, allocator.memfd >= 0 else { throw .needsMemfdBacking }
    let arenaBytes = allocator.pfnSpan.count * PageGeometry.pageSize
    let bytes = configuration.windowBytes ?? max(1 << 30, 4 * arenaBytes)
    guard bytes >= PageGeometry.pageSize * 2 else { throw .badConfiguration("window of \(bytes) bytes") }
    if let l = configuration.mapLimit, l < 2 { throw .badConfiguration("map limit \(l)") }
    let w = try AddressWindow(bytes: bytes)
    self.allocator = allocator
    self.configuration = configuration
    fd = allocator.memfd
    windowBase = w.base
    windowPages = w.pageCount
    mapLimit = configuration.mapLimit ?? Int.max
    state = LockedState(State(window: w))
    // debug_pagealloc protects the arena's mapping of a free page; this window is a second
    // mapping, which vfree unmaps before the pages go back. A fault here is reported with
    // the page last mapped at that address.
    if allocator.debugFaultRegion >= 0,
      let m = mmap(
        nil, w.pageCount * 4, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0),
      m != MAP_FAILED
    {
      let map = m.bindMemory(to: UInt32.self, capacity: w.pageCount)
      lastMapped = map
      let start = UInt(bitPattern: w.base)
      faultRegion = cpa_fault_register_alias(
        start, start + UInt(w.pageCount * PageGeometry.pageSize), map, allocator.debugFaultRegion)
    } else {
      lastMapped = nil
      faultRegion = -1
    }
  }

  deinit {
    // Areas still live are unmapped with the window; their pages stay allocated (a leak
    // the caller made, as in the kernel).
    let charged = state.withLock { $0.charged }
    MapCountBudget.uncharge(charged)
    if faultRegion >= 0 { cpa_fault_unregister(faultRegion) }
    state.withLock { $0.window.release() }
    if let lastMapped { munmap(lastMapped, windowPages * 4) }
  }

  // MARK: - Public views

  /// Pages held by vmalloc areas (the kernel's `nr_vmalloc_pages`, NR_VMALLOC); vmap
  /// areas are not counted.
  public var vmallocPageCount: Int { nrVmallocPages.load(ordering: .relaxed) }

  /// Live areas (vmalloc and vmap).
  public var areaCount: Int { state.withLock { $0.areas.count } }

  /// Mappings charged against the map-count budget by this instance (an upper bound of
  /// the VMAs its areas add to the process).
  public var chargedMappings: Int { state.withLock { $0.charged } }

  /// Mappings all instances in the process may charge together.
  public static var processMapBudget: Int { MapCountBudget.processLimit }

  /// Mappings charged by all instances in the process.
  public static var processChargedMappings: Int { MapCountBudget.processCharged.load(ordering: .relaxed) }

  /// `vm.max_map_count`.
  public static var maxMapCount: Int { MapCountBudget.maxMapCount }

  /// vmalloc and vmap calls that returned nil.
  public var failureCount: Int { failures.load(ordering: .relaxed) }

  /// vfree / vunmap calls with an address that is no live area's start (the kernel's
  /// "Trying to vfree() nonexistent vm area" warning).
  public var badCallCount: Int { badCalls.load(ordering: .relaxed) }

  /// The reserved address range.
  public var window: Range<UInt> {
    let b = UInt(bitPattern: windowBase)
    return b..<(b + UInt(windowPages * PageGeometry.pageSize))
  }

  /// The VMAs of this process inside the window, read from `/proc/self/maps`: one
  /// `---p` line per stretch of reserved space, one `rw-s` line per mapped run.
  public func windowMappings() -> [ProcessMapping] {
    processMappings(in: window.lowerBound, window.upperBound)
  }

  /// The pages of the area starting at `address` (nil if none), in mapping order: the
  /// n-th page backs bytes `n * 4096 ..< (n + 1) * 4096` (`vmalloc_to_page()` for the whole
  /// area).
  public func pages(of address: UnsafeRawPointer) -> [PFN]? {
    let addr = UInt(bitPattern: address)
    return state.withLock { s in
      guard let off = s.window.exactPageOffset(addr), let a = s.areas[off] else { return nil }
      return a.pages
    }
  }

  // MARK: - Internals shared by vmalloc and vmap

  @inline(__always) func warn(_ s: @autoclosure () -> String) {
    if allocator.configuration.printReports { printError(s()) }
  }

  /// Number of maximal ascending contiguous runs of `pages` (one mmap each).
  static func runCount(_ pages: [PFN]) -> Int {
    var runs = 0
    var prev = Int.min
    for p in pages {
      if p.value != prev &+ 1 { runs &+= 1 }
      prev = p.value
    }
    return runs
  }

  /// Charges `n` mappings to this instance and the process; false if either budget is
  /// spent.
  func charge(_ n: Int) -> Bool {
    let ok = state.withLock { s -> Bool in
      if s.charged + n > mapLimit { return false }
      s.charged += n
      return true
    }
    guard ok else { return false }
    if !MapCountBudget.charge(n) {
      state.withLock { $0.charged -= n }
      return false
    }
    return true
  }

  func uncharge(_ n: Int) {
    state.withLock { $0.charged -= n }
    MapCountBudget.uncharge(n)
  }

  /// Maps `pages` at window page `start`, one mmap per contiguous run. On failure restores
  /// the reservation over the area and returns false.
  func mapPages(_ pages: [PFN], at start: Int) -> Bool {
    let base = windowBase + start &* PageGeometry.pageSize
    let populate = configuration.prefault
    if let lastMapped {
      for (i, p) in pages.enumerated() { lastMapped[start &+ i] = UInt32(truncatingIfNeeded: p.value &+ 1) }
    }
    var ok = true
    pages.withUnsafeBufferPointer { buf in
      let n = buf.count
      var i = 0
      while i < n {
        let first = buf[i].value
        var k = 1
        while i &+ k < n && buf[i &+ k].value == first &+ k { k &+= 1 }
        let offset = allocator.memfdOffset(of: buf[i])
        if !AddressWindow.mapRun(
          base + i &* PageGeometry.pageSize, count: k, fd: fd, fileOffset: offset, populate: populate)
        {
          ok = false
          break
        }
        i &+= k
      }
    }
    if !ok {
      let e = errno
      warn("vmalloc: mmap of the memfd failed: \(String(cString: strerror(e)))")
      guard AddressWindow.unmapToReserved(base, pages: pages.count) else {
        fatalError("vmalloc: cannot restore PROT_NONE over a failed area; its pages would stay aliased")
      }
    }
    return ok
  }

  /// Takes a slot of `pages + 1` pages (the guard) whose first page is aligned to
  /// `alignPages`.
  func reserveSlot(pages: Int, alignPages: Int) -> Range<Int>? {
    state.withLock { s in
      guard let start = s.window.allocate(pages: pages &+ 1, alignPages: alignPages) else { return nil }
      return start..<(start &+ pages &+ 1)
    }
  }

  func releaseSlot(_ r: Range<Int>) {
    state.withLock { $0.window.release(r) }
  }
}

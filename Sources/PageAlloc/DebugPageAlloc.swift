internal import _PageAllocUtilities
import CPageAllocShim
import Glibc
import Synchronization

// debug_pagealloc over real memory (mm/debug_page_alloc.c, the x86 `__kernel_map_pages()`),
// and the settings every debug hook reads.
//
// The kernel unmaps a free page from its direct map; here a free page's arena bytes are
// made PROT_NONE with mprotect(2), and PROT_READ|PROT_WRITE again when the page is
// allocated. A read or write through a stale pointer then faults at once, and the SIGSEGV
// handler of the C shim (fault.c) prints the pfn, "use after free" and the page_owner
// record before letting the process die as it would have.
//
// Protection is a property of a mapping, not of the memory behind it: a page of the memfd
// mapped a second time (VMalloc maps areas at a vmalloc address) keeps that second mapping's
// protection. VMalloc unmaps an area before vfree gives its pages back, so both addresses
// of a freed page fault; a vmap of pages the caller frees while the vmap is live is not
// protected, as the kernel's vmalloc alias of an unmapped direct-map page is not.
//
// Each protection change is a VMA split or merge, so the number of alternating free and
// allocated stretches is bounded by `vm.max_map_count`. When mprotect fails (ENOMEM), the
// allocator reports it once, makes the whole arena accessible and stops protecting: a
// debugging aid must not turn into false use-after-free reports.

/// What the debug hooks do, fixed when the allocator is created.
struct DebugSettings {
  /// The page_owner records, one per pfn of the memmap span (nil: page_owner off).
  let owner: UnsafeMutablePointer<cpa_owner_record>?
  /// One byte per pfn: 1 once the page has been poisoned by a free. Fresh memory holds no
  /// poison (the kernel poisons every page it frees at boot; touching all of an arena
  /// reserved with MAP_NORESERVE would cost its whole size in RAM), so only pages freed
  /// since are checked.
  let poisoned: UnsafeMutablePointer<UInt8>?
  let basePFN: Int
  let spanPages: Int
  /// debug_pagealloc: free pages are PROT_NONE.
  let protect: Bool
  let initOnAlloc: Bool
  let initOnFree: Bool
  /// The arena's region in the fault handler (-1: none).
  let faultRegion: Int32
  let arenaBase: UnsafeMutableRawPointer?
  let arenaBytes: Int

  init(configuration c: PageAllocator.Configuration, arena: Arena, basePFN: Int, endPFN: Int) {
    let backed = c.backing != .none
    let poisoning = c.poisonPages && backed
    self.basePFN = basePFN
    let span = endPFN - basePFN
    spanPages = span
    // The kernel: "CONFIG_PAGE_POISONING is on, will take precedence over init_on_alloc
    // and init_on_free".
    initOnAlloc = c.initOnAlloc && backed && !poisoning
    initOnFree = c.initOnFree && backed && !poisoning
    protect = c.debugPageAlloc && backed
    let table =
      c.pageOwner
      ? DebugSettings.reserve(span * MemoryLayout<cpa_owner_record>.stride)?.bindMemory(
        to: cpa_owner_record.self, capacity: span) : nil
    owner = table
    poisoned =
      poisoning ? DebugSettings.reserve(span)?.bindMemory(to: UInt8.self, capacity: span) : nil
    arenaBase = arena.base
    let bytes = span * PageGeometry.pageSize
    arenaBytes = bytes
    var region: Int32 = -1
    if protect, let base = arena.base {
      // Everything is free at start: one protection change for the whole arena.
      mprotect(base, bytes, PROT_NONE)
      DebugSettings.registerGFPNames()
      var zones: [Int] = []
      for z in c.zones { zones += [z.pfns.lowerBound.value, z.pfns.upperBound.value] }
      region = zones.withUnsafeBufferPointer { zb in
        cpa_fault_register_arena(
          UInt(bitPattern: base), UInt(bitPattern: base + bytes), basePFN, zb.baseAddress,
          Int32(c.zones.count), table)
      }
    }
    faultRegion = region
  }

  /// Whether any debug hook has work to do (poisoning counts once its marks exist).
  var any: Bool { owner != nil || protect || initOnAlloc || initOnFree || poisoned != nil }

  func deallocate() {
    if faultRegion >= 0 { cpa_fault_unregister(faultRegion) }
    if let owner { munmap(owner, spanPages * MemoryLayout<cpa_owner_record>.stride) }
    if let poisoned { munmap(poisoned, spanPages) }
  }

  /// Zero-filled memory that costs nothing until touched.
  static func reserve(_ bytes: Int) -> UnsafeMutableRawPointer? {
    let p = mmap(nil, max(bytes, 1), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
    guard let p, p != MAP_FAILED else { return nil }
    return p
  }

  private static let gfpNamesRegistered = Atomic<Bool>(false)

  /// Gives the fault handler the gfp names it prints (`%pGg`), composites first.
  static func registerGFPNames() {
    guard !gfpNamesRegistered.exchange(true, ordering: .acquiringAndReleasing) else { return }
    let table = GFP.names
    let masks = table.map(\.mask.rawValue)
    let copies = table.map { strdup($0.name) }
    defer { for c in copies { free(c) } }
    let names = copies.map { UnsafePointer<CChar>($0) }
    masks.withUnsafeBufferPointer { mb in
      names.withUnsafeBufferPointer { nb in
        cpa_fault_set_gfp_names(
          mb.baseAddress, nb.baseAddress, Int32(table.count), GFP.movable.rawValue, GFP.reclaimable.rawValue)
      }
    }
  }
}

extension PageAllocator {
  /// Whether debug_pagealloc protects free pages now: on in the configuration, backed, and
  /// not given up for want of mappings (see ``Configuration/debugPageAlloc``).
  public var isProtectingFreePages: Bool { debug.protect && !protectionLost.load(ordering: .relaxed) }

  /// The fault handler's region of this allocator's arena (-1 without debug_pagealloc):
  /// what a second mapping of its pages (VMalloc's window) registers against.
  package var debugFaultRegion: Int32 { debug.faultRegion }

  /// `__kernel_map_pages(page, n, 0)`: makes `count` pages from `pfn` inaccessible. Called
  /// only by the thread that owns them, before they reach a free list.
  @usableFromInline
  func protectPages(_ pfn: Int, _ count: Int) {
    guard !protectionLost.load(ordering: .relaxed), let a = arena.address(of: pfn) else { return }
    protectionChanges.wrappingAdd(1, ordering: .relaxed)
    if _slowPath(mprotect(a, count &* PageGeometry.pageSize, PROT_NONE) != 0) { loseProtection(errno) }
  }

  /// `__kernel_map_pages(page, n, 1)`: makes `count` pages from `pfn` accessible again.
  /// Called by the thread that just took them off a free list. Still done after protection
  /// was given up: a free racing with that moment may have protected its pages late.
  @usableFromInline
  func unprotectPages(_ pfn: Int, _ count: Int) {
    guard let a = arena.address(of: pfn) else { return }
    protectionChanges.wrappingAdd(1, ordering: .relaxed)
    if _slowPath(mprotect(a, count &* PageGeometry.pageSize, PROT_READ | PROT_WRITE) != 0) {
      let e = errno
      loseProtection(e)
      // The whole arena is accessible now; these pages are part of it.
    }
  }

  /// mprotect failed (ENOMEM: `vm.max_map_count` reached): stop protecting, make every
  /// page accessible, and say so once.
  @inline(never)
  func loseProtection(_ e: Int32) {
    if protectionLost.exchange(true, ordering: .acquiringAndReleasing) { return }
    if let base = debug.arenaBase { mprotect(base, debug.arenaBytes, PROT_READ | PROT_WRITE) }
    printError(
      "pagealloc: debug_pagealloc: mprotect failed (errno \(e)\(e == ENOMEM ? ", vm.max_map_count reached" : "")):"
        + " free pages are no longer protected")
  }
}

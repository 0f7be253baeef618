import PageAlloc
import PageAllocVMalloc
import _PageAllocUtilities

/// The vmalloc part of `pagealloc stress`: each worker thread vmallocs and vfrees
/// areas of random sizes and vmaps pages it allocated itself, checking every byte pattern it
/// wrote through one address through the other.
///
/// - vmalloc: 1...600 pages (mostly small), half of the sizes not a multiple of the page
///   size; one in five with a start alignment of 4 KiB...2 MiB (checked), one in four with
///   `.zero` (checked zero through the vmalloc address before anything is written), three in
///   ten movable (`.highUserMovable`: compaction and contiguous ranges may migrate their
///   pages). A pattern is written through the vmalloc address (the first and last word of
///   every page) and read back through `PageAllocator.address(of:)` of each page the area
///   has, before the area is freed, by either `VMalloc.FreePath`. Every access to an area's
///   bytes runs inside `VMalloc.withPinnedArea(_:_:)`, which keeps a movable area's pages
///   in place for its duration.
/// - vmap: 1...64 pages the worker allocated (order-0 pages and split order-1...3 blocks,
///   sometimes shuffled), a pattern written through `address(of:)` checked through the vmap
///   address, a second one written through the vmap address checked through `address(of:)`
///   before `VMalloc.vunmap(_:)`; the pages are then freed with `freePagesBulk` or one
///   `putPage` each.
/// - check: a random live area's patterns re-read while other workers run.
///
/// Injected allocation failures make vmalloc return nil (counted, not a failure). At the end
/// every area is freed; ``report()`` fails the run on any pattern mismatch, a misaligned
/// area, a refused vfree/vunmap, or anything VMalloc still holds (areas, pages, charged
/// mappings, `rw` mappings in its window, a failed `VMalloc.verify()`); the engine's own
/// leak check counts the pages.
///
/// Each worker keeps its areas in its own `ThreadState` and draws every choice from the
/// worker's random stream, so a single-thread run is as deterministic as the engine.
public final class VMallocStressExtension: StressExtension, @unchecked Sendable {
  public let name = "vmalloc"
  public let weight: Int
  public var requiredBacking: Backing? { .memfd }

  /// Largest vmalloc area, in pages.
  public static let maxAreaPages = 600
  /// Largest vmap, in pages.
  public static let maxVmapPages = 64
  /// Live areas per worker before it only frees.
  public static let maxAreasPerThread = 48

  struct VArea {
    var address: UnsafeMutableRawPointer
    var size: Int
    var pageCount: Int
    var tag: UInt64
  }

  struct MArea {
    var address: UnsafeMutableRawPointer
    var pages: [PFN]
    var tag: UInt64
  }

  struct Counts {
    var vmalloc = 0, vmallocFailed = 0, vzalloc = 0, aligned = 0, oddSize = 0
    var vfreeBulk = 0, vfreePerPage = 0, vmap = 0, vmapFailed = 0, vunmap = 0
    var checks = 0, pagesChecked = 0, failures = 0, pagesMapped = 0, movable = 0

    mutating func add(_ o: Counts) {
      vmalloc += o.vmalloc; vmallocFailed += o.vmallocFailed; vzalloc += o.vzalloc; aligned += o.aligned
      oddSize += o.oddSize; vfreeBulk += o.vfreeBulk; vfreePerPage += o.vfreePerPage; vmap += o.vmap
      vmapFailed += o.vmapFailed; vunmap += o.vunmap; checks += o.checks; pagesChecked += o.pagesChecked
      failures += o.failures; pagesMapped += o.pagesMapped; movable += o.movable
    }

    var dictionary: [String: Int] {
      [
        "vmalloc": vmalloc, "vmalloc-failed": vmallocFailed, "vzalloc": vzalloc, "aligned": aligned,
        "odd-size": oddSize, "vfree-bulk": vfreeBulk, "vfree-per-page": vfreePerPage, "vmap": vmap,
        "vmap-failed": vmapFailed, "vunmap": vunmap, "checks": checks, "pages-checked": pagesChecked,
        "failures": failures, "pages-mapped": pagesMapped, "movable": movable,
      ]
    }
  }

  /// One worker's areas and counts (touched only by that worker, and by the engine's
  /// cleanup after the workers are joined).
  final class ThreadState {
    var vmallocs: [VArea] = []
    var vmaps: [MArea] = []
    var livePages = 0
    var counts = Counts()
    var failures: [String] = []
  }

  private(set) public var vmalloc: VMalloc?
  var states: [ThreadState] = []
  var pageCap = 0
  var prepareAllocator: PageAllocator?

  /// - Parameter weight: relative weight among the engine's operations (the engine's own
  ///   add up to 100).
  public init(weight: Int = 1) {
    self.weight = weight
  }

  /// Builds the `VMalloc` over the run's allocator (which must be memfd-backed) and one
  /// state per worker. Each worker may hold up to 1/8 of its share of the pages (at most
  /// 4096) in areas.
  public func prepare(_ allocator: PageAllocator, threads: Int) throws {
    pageCap = max(64, min(4096, allocator.managedPageCount / (8 * threads)))
    let perThread =
      pageCap + VMallocStressExtension.maxAreaPages
      + VMallocStressExtension.maxAreasPerThread * (AddressWindow.maxAlignment / PageGeometry.pageSize + 1)
    let window = max(1 << 30, threads * perThread * PageGeometry.pageSize)
    // Charged mappings are at most one per page plus one per area: bound this instance so a
    // run never spends the process's budget.
    let mapLimit =
      threads * (pageCap + VMallocStressExtension.maxAreaPages + 2 * VMallocStressExtension.maxAreasPerThread + 2)
    vmalloc = nil
    vmalloc = try VMalloc(allocator: allocator, configuration: .init(windowBytes: window, mapLimit: mapLimit))
    states = (0..<threads).map { _ in ThreadState() }
  }

  public func step(_ a: PageAllocator, thread: Int, random r: inout StressRandom) {
    guard let vm = vmalloc else { return }
    let s = states[thread]
    let full = s.livePages >= pageCap || s.vmallocs.count + s.vmaps.count >= VMallocStressExtension.maxAreasPerThread
    let pick = r.below(100)
    if full || pick >= 60 {
      if !freeOne(vm, a, s, &r) { vmallocOne(vm, a, s, &r) }
    } else if pick < 40 {
      vmallocOne(vm, a, s, &r)
    } else if pick < 52 {
      vmapOne(vm, a, s, &r)
    } else if !checkOne(vm, a, s, &r) {
      vmallocOne(vm, a, s, &r)
    }
  }

  public func finish(_ a: PageAllocator, thread: Int) {
    guard let vm = vmalloc else { return }
    let s = states[thread]
    while let v = s.vmallocs.popLast() { release(v, vm, a, s, bulk: true) }
    while let m = s.vmaps.popLast() { release(m, vm, a, s, bulk: true) }
  }

  public func report() -> StressExtensionReport {
    var total = Counts()
    var failures: [String] = []
    for s in states {
      total.add(s.counts)
      failures += s.failures
    }
    if let vm = vmalloc {
      if vm.areaCount != 0 { failures.append("\(vm.areaCount) areas left in VMalloc") }
      if vm.vmallocPageCount != 0 { failures.append("\(vm.vmallocPageCount) vmalloc pages left") }
      if vm.chargedMappings != 0 { failures.append("\(vm.chargedMappings) mappings still charged") }
      if vm.badCallCount != 0 { failures.append("\(vm.badCallCount) vfree/vunmap calls refused") }
      let mapped = vm.windowMappings().filter { $0.permissions != "---p" }
      if !mapped.isEmpty { failures.append("\(mapped.count) mappings left in the vmalloc window") }
      do { try vm.verify() } catch { failures.append("VMalloc.verify: \(error)") }
    }
    return StressExtensionReport(name: name, counts: total.dictionary, failures: failures)
  }

  // MARK: - Operations

  static func word(_ tag: UInt64, _ i: Int) -> UInt64 { tag ^ (UInt64(i) &* 0x9E37_79B9_7F4A_7C15) }

  func fail(_ s: ThreadState, _ message: @autoclosure () -> String) {
    s.counts.failures += 1
    if s.failures.count < 20 { s.failures.append(message()) }
  }

  func vmallocOne(_ vm: VMalloc, _ a: PageAllocator, _ s: ThreadState, _ r: inout StressRandom) {
    let n: Int
    switch r.below(20) {
    case 0..<10: n = 1 + r.below(16)
    case 10..<17: n = 17 + r.below(112)
    default: n = 129 + r.below(VMallocStressExtension.maxAreaPages - 128)
    }
    let odd = r.chance(0.5)
    let size =
      odd ? (n - 1) * PageGeometry.pageSize + 1 + r.below(PageGeometry.pageSize - 1) : n * PageGeometry.pageSize
    let align = r.chance(0.2) ? 1 << (12 + r.below(10)) : PageGeometry.pageSize
    let zero = r.chance(0.25)
    var gfp: GFP = r.chance(0.7) ? .kernel : .highUserMovable
    gfp.insert(.noWarn)
    if zero { gfp.insert(.zero) }
    let tag = r.next()
    guard let p = vm.vmalloc(size, gfp: gfp, align: align) else {
      s.counts.vmallocFailed += 1
      return
    }
    s.counts.vmalloc += 1
    s.counts.pagesMapped += n
    if gfp.contains(.movable) { s.counts.movable += 1 }
    if zero { s.counts.vzalloc += 1 }
    if odd { s.counts.oddSize += 1 }
    if align > PageGeometry.pageSize {
      s.counts.aligned += 1
      if UInt(bitPattern: p) % UInt(align) != 0 { fail(s, "vmalloc(\(size), align \(align)) returned \(p)") }
    }
    let last = PageGeometry.pageSize - 8
    let probe = 8 * r.below(PageGeometry.pageSize / 8)
    let pinned: Void? = vm.withPinnedArea(p) { bytes, _ in
      let p = bytes.baseAddress!
      if zero {
        for i in 0..<n {
          let page = p + i &* PageGeometry.pageSize
          let z0 = page.load(as: UInt64.self)
          let z1 = page.load(fromByteOffset: last, as: UInt64.self)
          let z2 = page.load(fromByteOffset: probe, as: UInt64.self)
          if z0 | z1 | z2 != 0 {
            fail(s, "vzalloc(\(size)): page \(i) of \(n) not zero through the vmalloc address")
            break
          }
        }
      }
      for i in 0..<n {
        let page = p + i &* PageGeometry.pageSize
        let w = VMallocStressExtension.word(tag, i)
        page.storeBytes(of: w, as: UInt64.self)
        page.storeBytes(of: ~w, toByteOffset: last, as: UInt64.self)
      }
    }
    if pinned == nil { fail(s, "withPinnedArea(\(p)) does not know the area vmalloc just returned") }
    s.vmallocs.append(VArea(address: p, size: size, pageCount: n, tag: tag))
    s.livePages += n
  }

  /// Reads a vmalloc area's pattern back through each page's allocator address, with the
  /// area pinned (its pages may move between two checks, not during one).
  func check(_ v: VArea, _ vm: VMalloc, _ a: PageAllocator, _ s: ThreadState) {
    let done: Void? = vm.withPinnedArea(v.address) { _, pages in
      guard pages.count == v.pageCount else {
        fail(s, "vmalloc(\(v.size)) has \(pages.count) pages, expected \(v.pageCount)")
        return
      }
      let last = PageGeometry.pageSize - 8
      for i in 0..<pages.count {
        guard let q = a.address(of: pages[i]) else {
          fail(s, "no address for pfn \(pages[i])")
          return
        }
        let w = VMallocStressExtension.word(v.tag, i)
        let w0 = q.load(as: UInt64.self)
        let w1 = q.load(fromByteOffset: last, as: UInt64.self)
        if w0 != w || w1 != ~w {
          fail(
            s,
            "vmalloc(\(v.size)) page \(i) (pfn \(pages[i])): address(of:) reads \(String(w0, radix: 16))/\(String(w1, radix: 16)), wrote \(String(w, radix: 16))/\(String(~w, radix: 16)) through the vmalloc address"
          )
          return
        }
      }
      s.counts.pagesChecked += pages.count
    }
    if done == nil { fail(s, "vmalloc area \(v.address) of \(v.pageCount) pages unknown to VMalloc.withPinnedArea") }
  }

  func vmapOne(_ vm: VMalloc, _ a: PageAllocator, _ s: ThreadState, _ r: inout StressRandom) {
    let n = 1 + r.below(VMallocStressExtension.maxVmapPages)
    let gfp: GFP = r.chance(0.5) ? [.kernel, .noWarn] : [.highUserMovable, .noWarn]
    var pages: [PFN] = []
    pages.reserveCapacity(n)
    while pages.count < n {
      let left = n - pages.count
      let order = left >= 2 && r.chance(0.3) ? 1 + r.below(min(3, PageGeometry.floorLog2(left))) : 0
      guard let p = a.allocPages(order: order, gfp: gfp) else { break }
      if order > 0 { a.splitPage(p, order: order) }
      for i in 0..<(1 << order) { pages.append(p + i) }
    }
    guard !pages.isEmpty else {
      s.counts.vmapFailed += 1
      return
    }
    if r.chance(0.5) {
      for i in stride(from: pages.count - 1, to: 0, by: -1) { pages.swapAt(i, r.below(i + 1)) }
    }
    let tag = r.next()
    for (i, q) in pages.enumerated() {
      a.address(of: q)!.storeBytes(of: VMallocStressExtension.word(tag, i), as: UInt64.self)
    }
    guard let p = vm.vmap(pages) else {
      s.counts.vmapFailed += 1
      a.freePagesBulk(pages)
      return
    }
    s.counts.vmap += 1
    s.counts.pagesMapped += pages.count
    for i in 0..<pages.count {
      let page = p + i &* PageGeometry.pageSize
      let w = VMallocStressExtension.word(tag, i)
      let got = page.load(as: UInt64.self)
      if got != w {
        fail(
          s,
          "vmap of \(pages.count) pages: page \(i) (pfn \(pages[i])) reads \(String(got, radix: 16)) through the vmap address, wrote \(String(w, radix: 16)) through address(of:)"
        )
        break
      }
      page.storeBytes(of: ~w, toByteOffset: 2048, as: UInt64.self)
    }
    s.vmaps.append(MArea(address: p, pages: pages, tag: tag))
    s.livePages += pages.count
  }

  /// Reads a vmap area's second pattern back through each page's allocator address.
  func check(_ m: MArea, _ a: PageAllocator, _ s: ThreadState) {
    for (i, q) in m.pages.enumerated() {
      let w = VMallocStressExtension.word(m.tag, i)
      let got = a.address(of: q)!.load(fromByteOffset: 2048, as: UInt64.self)
      if got != ~w {
        fail(
          s,
          "vmap page \(i) (pfn \(q)): address(of:) reads \(String(got, radix: 16)), wrote \(String(~w, radix: 16)) through the vmap address"
        )
        return
      }
    }
    s.counts.pagesChecked += m.pages.count
  }

  func checkOne(_ vm: VMalloc, _ a: PageAllocator, _ s: ThreadState, _ r: inout StressRandom) -> Bool {
    let total = s.vmallocs.count + s.vmaps.count
    guard total > 0 else { return false }
    let i = r.below(total)
    if i < s.vmallocs.count { check(s.vmallocs[i], vm, a, s) } else { check(s.vmaps[i - s.vmallocs.count], a, s) }
    s.counts.checks += 1
    return true
  }

  func freeOne(_ vm: VMalloc, _ a: PageAllocator, _ s: ThreadState, _ r: inout StressRandom) -> Bool {
    let total = s.vmallocs.count + s.vmaps.count
    guard total > 0 else { return false }
    var i = r.below(total)
    let bulk = r.chance(0.5)
    if i < s.vmallocs.count {
      s.vmallocs.swapAt(i, s.vmallocs.count - 1)
      release(s.vmallocs.removeLast(), vm, a, s, bulk: bulk)
    } else {
      i -= s.vmallocs.count
      s.vmaps.swapAt(i, s.vmaps.count - 1)
      release(s.vmaps.removeLast(), vm, a, s, bulk: bulk)
    }
    return true
  }

  func release(_ v: VArea, _ vm: VMalloc, _ a: PageAllocator, _ s: ThreadState, bulk: Bool) {
    check(v, vm, a, s)
    if vm.vfree(v.address, freePath: bulk ? .bulk : .perPage) {
      if bulk { s.counts.vfreeBulk += 1 } else { s.counts.vfreePerPage += 1 }
    } else {
      fail(s, "vfree(\(v.address)) refused a live area")
    }
    s.livePages -= v.pageCount
  }

  func release(_ m: MArea, _ vm: VMalloc, _ a: PageAllocator, _ s: ThreadState, bulk: Bool) {
    check(m, a, s)
    if vm.vunmap(m.address) {
      s.counts.vunmap += 1
      if bulk {
        a.freePagesBulk(m.pages)
      } else {
        for q in m.pages { a.putPage(q) }
      }
    } else {
      // The pages may still be mapped: leaking them is safer than freeing them.
      fail(s, "vunmap(\(m.address)) refused a live vmap area")
    }
    s.livePages -= m.pages.count
  }
}

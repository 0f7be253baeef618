@_spi(Benchmark) import PageAlloc
import _PageAllocUtilities
import PageAllocVMalloc
import Glibc

/// The `vmalloc` bench suite: the cases of the kernel's lib/test_vmalloc.c that apply here,
/// each run with vfree's per-page free path and with the series' bulk path
/// (`PageAllocator.freePagesBulk(_:)`), and beside them the same sizes with
/// plain `mmap`/`munmap` and with `malloc`/`free`, what a Swift program would use instead.
///
/// Like the kernel module, each case is timed whole (setup, loop and teardown) and reported
/// per loop iteration. Differences from the module: loop counts are smaller (1,000,000 in
/// the kernel), `full_fit_alloc_test` keeps 8192 junk pairs (the kernel: fls(CPUs) × 8192)
/// so its live one-page areas stay inside the map-count budget, and
/// `random_size_align_alloc_test` draws alignments up to 2^21 (the pageblock size, this
/// vmalloc's limit) instead of 2^22. `fix_size_alloc_test` touches every page, so its
/// buffers are really used (the kernel writes one byte); the others write the first byte,
/// as the kernel does.
public enum VMallocBench {
  /// A free path or a comparison.
  public enum Variant: String, Sendable, CaseIterable {
    case perPage = "per-page"
    case bulk
    case mmap
    case malloc
    /// The page work alone: `vm_area_alloc_pages()` and the per-page free, no mapping
    /// (pages touched through `PageAllocator.address(of:)`).
    case pagesPerPage = "pages-per-page"
    /// The page work alone with `free_pages_bulk()`.
    case pagesBulk = "pages-bulk"
  }

  /// Ratios of one case: `perPageOverBulk` > 1 means the bulk free is faster;
  /// `mmapOverBulk` / `mallocOverBulk` > 1 mean vmalloc (bulk) is faster than the
  /// alternative.
  public struct Ratio: Sendable, Hashable {
    public var test: String
    public var bulkMicroseconds: Double
    public var perPageOverBulk: Double
    public var mmapOverBulk: Double
    public var mallocOverBulk: Double
    /// The page work alone: per-page free over bulk free (no mmap in either).
    public var pagesPerPageOverBulk: Double
  }

  struct Case {
    var name: String
    var loops: Int
    /// Average pages per iteration (for nsPerPage).
    var pages: Int
    var body: (Allocator, Int) throws(BenchError) -> Void
  }

  /// What the cases allocate with.
  final class Allocator {
    let variant: Variant
    let vm: VMalloc?
    init(_ variant: Variant, _ vm: VMalloc?) {
      self.variant = variant
      self.vm = vm
    }

    struct Handle {
      var ptr: UnsafeMutableRawPointer
      var base: UnsafeMutableRawPointer
      var len: Int
      var pages: [PFN] = []
    }

    @inline(__always)
    func alloc(_ size: Int, align: Int = PageGeometry.pageSize, zero: Bool = false) -> Handle? {
      switch variant {
      case .perPage, .bulk:
        guard let p = vm!.vmalloc(size, gfp: zero ? [.kernel, .zero] : .kernel, align: align) else { return nil }
        return Handle(ptr: p, base: p, len: size)
      case .mmap:
        // Anonymous memory is zero already; alignment beyond a page costs a larger mapping.
        let extra = align > PageGeometry.pageSize ? align : 0
        let len = size + extra
        guard let b = Glibc.mmap(nil, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), b != MAP_FAILED
        else { return nil }
        let a = (UInt(bitPattern: b) + UInt(max(align, 1)) - 1) & ~(UInt(max(align, 1)) - 1)
        return Handle(ptr: UnsafeMutableRawPointer(bitPattern: a)!, base: b, len: len)
      case .pagesPerPage, .pagesBulk:
        let vm = vm!
        let n = (size + PageGeometry.pageSize - 1) / PageGeometry.pageSize
        var pages: [PFN] = []
        pages.reserveCapacity(n)
        guard vm.allocAreaPages(n, gfp: zero ? [.kernel, .zero] : .kernel, into: &pages) == n else {
          vm.allocator.freePagesBulk(pages)
          return nil
        }
        let p = vm.allocator.address(of: pages[0])!
        return Handle(ptr: p, base: p, len: size, pages: pages)
      case .malloc:
        var p: UnsafeMutableRawPointer?
        if align > 16 {
          guard posix_memalign(&p, align, size) == 0 else { return nil }
        } else {
          p = Glibc.malloc(size)
        }
        guard let p else { return nil }
        if zero { memset(p, 0, size) }
        return Handle(ptr: p, base: p, len: size)
      }
    }

    @inline(__always)
    func free(_ h: Handle) {
      switch variant {
      case .perPage: vm!.vfree(h.ptr, freePath: .perPage)
      case .bulk: vm!.vfree(h.ptr, freePath: .bulk)
      case .mmap: munmap(h.base, h.len)
      case .malloc: Glibc.free(h.ptr)
      case .pagesPerPage: for p in h.pages { vm!.allocator.freePages(p, order: 0) }
      case .pagesBulk: vm!.allocator.freePagesBulk(h.pages)
      }
    }

    /// Writes one byte in each of the first `pages` pages.
    @inline(__always)
    func touch(_ h: Handle, _ pages: Int) {
      if h.pages.isEmpty {
        touchPages(h.ptr, pages)
      } else {
        for p in h.pages { vm!.allocator.address(of: p)!.storeBytes(of: 1, as: UInt8.self) }
      }
    }
  }

  @inline(__always)
  static func touchPages(_ p: UnsafeMutableRawPointer, _ pages: Int) {
    var k = 0
    while k < pages {
      (p + k &* PageGeometry.pageSize).storeBytes(of: 1, as: UInt8.self)
      k &+= 1
    }
  }

  /// An allocation a case needs failed: a broken path (or a map-count budget used up by
  /// another user of the process), never a figure.
  static func failed(_ what: String) -> BenchError { BenchError(suite: "vmalloc", what) }

  @inline(__always)
  static func next(_ s: inout UInt64) -> UInt64 {
    s ^= s << 13
    s ^= s >> 7
    s ^= s << 17
    return s
  }

  static func cases(quick: Bool) -> [Case] {
    let scale = quick ? 10 : 1
    let pg = PageGeometry.pageSize
    var out: [Case] = []
    for n in [1, 4, 16, 64, 512] {
      let loops = (n >= 512 ? 2_000 : n >= 64 ? 10_000 : 20_000) / scale
      out.append(
        Case(name: "fix_size_alloc_test p:\(n)", loops: loops, pages: n) { (a, loops) throws(BenchError) in
          for _ in 0..<loops {
            guard let h = a.alloc(n * pg) else { throw failed("allocation failed") }
            a.touch(h, n)
            a.free(h)
          }
        })
    }
    out.append(
      Case(name: "random_size_alloc_test", loops: 20_000 / scale, pages: 50) { (a, loops) throws(BenchError) in
        var s: UInt64 = 0x1234_5678
        for _ in 0..<loops {
          let n = 1 + Int(next(&s) % 100)
          guard let h = a.alloc(n * pg) else { throw failed("allocation failed") }
          h.ptr.storeBytes(of: 1, as: UInt8.self)
          a.free(h)
        }
      })
    let junk = quick ? 2048 : 8192
    out.append(
      Case(name: "full_fit_alloc_test", loops: 20_000 / scale, pages: 1) { (a, loops) throws(BenchError) in
        var keep: [Allocator.Handle] = []
        var junkPtrs: [Allocator.Handle] = []
        keep.reserveCapacity(junk)
        junkPtrs.reserveCapacity(junk)
        for _ in 0..<junk {
          guard let p = a.alloc(pg), let j = a.alloc(pg) else { throw failed("junk allocation failed") }
          keep.append(p)
          junkPtrs.append(j)
        }
        for j in junkPtrs { a.free(j) }
        for _ in 0..<loops {
          guard let h = a.alloc(pg) else { throw failed("allocation failed") }
          h.ptr.storeBytes(of: 1, as: UInt8.self)
          a.free(h)
        }
        for p in keep { a.free(p) }
      })
    let busy = quick ? 1500 : 15000
    out.append(
      Case(name: "long_busy_list_alloc_test", loops: 10_000 / scale, pages: 101) { (a, loops) throws(BenchError) in
        var keep: [Allocator.Handle] = []
        keep.reserveCapacity(busy)
        for _ in 0..<busy {
          guard let p = a.alloc(pg) else { throw failed("busy-list allocation failed") }
          keep.append(p)
        }
        for _ in 0..<loops {
          guard let p1 = a.alloc(100 * pg), let p2 = a.alloc(pg) else { throw failed("allocation failed") }
          p1.ptr.storeBytes(of: 0, as: UInt8.self)
          p2.ptr.storeBytes(of: 1, as: UInt8.self)
          a.free(p1)
          a.free(p2)
        }
        for p in keep { a.free(p) }
      })
    out.append(
      Case(name: "fix_align_alloc_test", loops: 20_000 / scale, pages: 5) { (a, loops) throws(BenchError) in
        // THREAD_ALIGN << 1 with x86-64's 16 KiB THREAD_SIZE.
        for _ in 0..<loops {
          guard let h = a.alloc(5 * pg, align: 32 * 1024, zero: true) else {
            throw failed("allocation failed")
          }
          a.free(h)
        }
      })
    out.append(
      Case(name: "random_size_align_alloc_test", loops: 20_000 / scale, pages: 5) { (a, loops) throws(BenchError) in
        var s: UInt64 = 0x8765_4321
        for _ in 0..<loops {
          let r = next(&s) & 0xff
          let align = 1 << Int(r % 22)
          let size = Int(r % 10 + 1) * pg
          guard let h = a.alloc(size, align: align, zero: true) else { throw failed("allocation failed") }
          a.free(h)
        }
      })
    return out
  }

  /// Runs every case with every ``Variant`` (per-page and bulk on the same allocator, one
  /// after the other) and returns one ``BenchResult`` per case and variant, suite
  /// `vmalloc`, variant `"<case> <variant>"` (e.g. `fix_size_alloc_test p:16 bulk`). The
  /// bulk results carry the ratios in `extra` (`per_page_over_bulk`, `mmap_over_bulk`,
  /// `malloc_over_bulk`), and every result `us_per_op` and `loops`. `quick` divides the
  /// loop counts by 10 and runs one round; otherwise each figure is the best of 3 rounds.
  /// Returns an empty array (with a message on standard error) if the memory cannot be set
  /// up. `prefault: false` maps areas without `MAP_POPULATE` (first touch faults).
  ///
  /// After each case (all its variants) the result is checked: every page free again,
  /// `verify()` clean on the allocator and the vmalloc, no bad-page report and no bad
  /// vfree, no area left and no mapping charged. A failed check or a failed allocation
  /// throws a ``BenchError``; so does an arena or window that cannot be set up.
  public static func run(quick: Bool, prefault: Bool = true) throws -> [BenchResult] {
    try run(quick: quick, prefault: prefault, BenchOptions())
  }

  /// ``run(quick:prefault:)`` with the options of a `pagealloc bench` run (a sabotage, in
  /// the tests).
  package static func run(quick: Bool, prefault: Bool = true, _ o: BenchOptions) throws -> [BenchResult] {
    // 1 GiB of pfns (memfd, reserved with MAP_NORESERVE; only touched pages cost RAM).
    let alloc: PageAllocator
    let vm: VMalloc
    do {
      alloc = try PageAllocator(
        configuration: .normal(pages: 1 << 18, cpuCount: 2, backing: .memfd))
      vm = try VMalloc(allocator: alloc, configuration: .init(prefault: prefault))
    } catch {
      throw failed("could not set up the memfd arena or the window: \(error)")
    }
    let start = alloc.freePageCount
    let rounds = quick ? 1 : 3
    var best: [String: UInt64] = [:]
    let all = cases(quick: quick)
    for _ in 0..<rounds {
      for c in all {
        for v in Variant.allCases {
          let a = Allocator(v, vm)
          let t0 = monotonicNanoseconds()
          try c.body(a, c.loops)
          let t = monotonicNanoseconds() &- t0
          let key = "\(c.name) \(v.rawValue)"
          best[key] = min(best[key] ?? .max, t)
        }
        try checkRestored(alloc, vm, startFree: start, c.name, o)
      }
    }
    var results: [BenchResult] = []
    for c in all {
      let bulk = Double(best["\(c.name) bulk"]!)
      for v in Variant.allCases {
        let t = best["\(c.name) \(v.rawValue)"]!
        var extra: [String: Double] = [
          "us_per_op": Double(t) / 1000 / Double(c.loops), "loops": Double(c.loops),
        ]
        if v == .bulk {
          extra["per_page_over_bulk"] = Double(best["\(c.name) per-page"]!) / bulk
          extra["mmap_over_bulk"] = Double(best["\(c.name) mmap"]!) / bulk
          extra["malloc_over_bulk"] = Double(best["\(c.name) malloc"]!) / bulk
          extra["pages_per_page_over_bulk"] =
            Double(best["\(c.name) pages-per-page"]!) / Double(best["\(c.name) pages-bulk"]!)
        }
        results.append(
          BenchResult(
            suite: "vmalloc", variant: "\(c.name) \(v.rawValue)", iterations: c.loops, pagesPerIteration: c.pages,
            totalNanoseconds: t, extra: extra))
      }
    }
    blackHole(alloc.freePageCount)
    return results
  }

  /// The check after a case: ``benchCheckRestored(_:startFree:suite:variant:)`` on the
  /// allocator, then the vmalloc's own state.
  static func checkRestored(
    _ alloc: PageAllocator, _ vm: VMalloc, startFree: Int, _ name: String, _ o: BenchOptions
  ) throws {
    try benchCheck(alloc, startFree: startFree, suite: "vmalloc", variant: name, o)
    do {
      try vm.verify()
    } catch {
      throw failed("\(name): \(error)")
    }
    if vm.areaCount != 0 || vm.vmallocPageCount != 0 || vm.chargedMappings != 0 || vm.badCallCount != 0 {
      throw failed(
        "\(name): \(vm.areaCount) area(s), \(vm.vmallocPageCount) page(s) and \(vm.chargedMappings) mapping(s) left,"
          + " \(vm.badCallCount) bad call(s)")
    }
  }

  /// The ratios of each case, from ``run(quick:prefault:)``'s results.
  public static func ratios(_ results: [BenchResult]) -> [Ratio] {
    var out: [Ratio] = []
    for r in results where r.suite == "vmalloc" && r.variant.hasSuffix(" bulk") {
      out.append(
        Ratio(
          test: String(r.variant.dropLast(5)), bulkMicroseconds: r.extra["us_per_op"] ?? 0,
          perPageOverBulk: r.extra["per_page_over_bulk"] ?? 0, mmapOverBulk: r.extra["mmap_over_bulk"] ?? 0,
          mallocOverBulk: r.extra["malloc_over_bulk"] ?? 0,
          pagesPerPageOverBulk: r.extra["pages_per_page_over_bulk"] ?? 0))
    }
    return out
  }

  /// A text table: us per operation for each variant, then the ratios.
  public static func format(_ results: [BenchResult]) -> String {
    func f(_ x: Double, _ digits: Int = 2) -> String {
      var s = String(Int((x * pow(10, Double(digits))).rounded()))
      while s.count <= digits { s = "0" + s }
      s.insert(".", at: s.index(s.endIndex, offsetBy: -digits))
      return s
    }
    func pad(_ s: String, _ w: Int, left: Bool = false) -> String {
      s.count >= w
        ? s : (left ? s + String(repeating: " ", count: w - s.count) : String(repeating: " ", count: w - s.count) + s)
    }
    var us: [String: Double] = [:]
    for r in results where r.suite == "vmalloc" { us[r.variant] = r.extra["us_per_op"] ?? r.nsPerIteration / 1000 }
    var out =
      pad("test (us/op)", 30, left: true) + pad("per-page", 10) + pad("bulk", 10) + pad("mmap", 10)
      + pad("malloc", 10) + pad("pg-pp", 9) + pad("pg-bulk", 9) + pad("pp/bulk", 9) + pad("mmap/bulk", 10)
      + pad("malloc/bulk", 12) + pad("pg pp/bulk", 11) + "\n"
    for r in ratios(results) {
      out += pad(r.test, 30, left: true)
      for v in Variant.allCases {
        out += pad(f(us["\(r.test) \(v.rawValue)"] ?? 0), v.rawValue.hasPrefix("pages") ? 9 : 10)
      }
      out +=
        pad(f(r.perPageOverBulk), 9) + pad(f(r.mmapOverBulk), 10) + pad(f(r.mallocOverBulk), 12)
        + pad(f(r.pagesPerPageOverBulk), 11) + "\n"
    }
    return out
  }
}

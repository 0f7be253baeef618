// libFuzzer target (a): API call sequences decoded from bytes.
//
// Each input builds a small allocator (a DMA zone and a Normal zone with a memmap hole,
// 1024-page sections, backing .none), then runs one operation per few bytes: well-formed
// calls on what the sequence allocated, and hostile ones on arbitrary pfns and orders
// (double frees, wrong orders, foreign pfns, compound heads, flags set on pages in use,
// split/get/put of free pages). After the sequence the allocator must verify(); a trap
// or a verification failure is a crash. Built by Fuzz/build.sh together with the library
// sources (one module), so internals are not needed: only the public API is used.

struct ByteReader {
  let p: UnsafeRawBufferPointer
  var i = 0
  var atEnd: Bool { i >= p.count }
  mutating func u8() -> Int {
    guard i < p.count else { return 0 }
    defer { i += 1 }
    return Int(p[i])
  }
  mutating func u16() -> Int { u8() | (u8() << 8) }
}

enum FuzzHeld {
  case block(PFN, Int, frozen: Bool)
  case run(PFN, Int, frozen: Bool)
  case pages([PFN])
}

let fuzzGFPs: [GFP] = [
  .kernel, .highUserMovable, [.kernel, .reclaimable], .atomic, .nowait, [.kernel, .comp], [.kernel, .dma],
  [.kernel, .dma32], [.atomic, .comp], [.kernel, .zero], [.kernel, .high, .movable], GFP(rawValue: 0xFFFF_FFFF),
]

let fuzzConfiguration = PageAllocator.Configuration(
  zones: [
    ZoneConfiguration(kind: .dma, pfns: PFN(0)..<PFN(1000)),
    ZoneConfiguration(kind: .normal, pfns: PFN(1000)..<PFN(8192)),
  ], cpuCount: 2, backing: .none, sectionPages: 1024, holes: [PFN(4096)..<PFN(5120)])

func fuzzOneSequence(_ data: UnsafeRawBufferPointer) {
  let a: PageAllocator
  do { a = try PageAllocator(configuration: fuzzConfiguration) } catch { fatalError("init: \(error)") }
  var r = ByteReader(p: data)
  var held: [FuzzHeld] = []
  var steps = 0
  while !r.atEnd && steps < 4096 {
    steps += 1
    let op = r.u8()
    switch op % 20 {
    case 0, 1:
      let o = r.u8() % 12
      let g = fuzzGFPs[r.u8() % fuzzGFPs.count]
      if let p = a.allocPages(order: o, gfp: g) { held.append(.block(p, o, frozen: false)) }
    case 2:
      let o = r.u8() % 11
      if let p = a.allocFrozenPages(order: o, gfp: fuzzGFPs[r.u8() % fuzzGFPs.count]) { held.append(.block(p, o, frozen: true)) }
    case 3, 4:
      guard !held.isEmpty else { continue }
      let h = held.remove(at: r.u8() % held.count)
      release(a, h, how: r.u8())
    case 5:
      guard !held.isEmpty else { continue }
      let i = r.u8() % held.count
      if case .block(let p, let o, false) = held[i] {
        a.splitPage(p, order: o)
        held[i] = .run(p, 1 << o, frozen: false)
      }
    case 6:
      guard !held.isEmpty else { continue }
      if case .block(let p, _, false) = held[r.u8() % held.count] {
        a.getPage(p)
        a.putPage(p)
      }
    case 7:
      var pages: [PFN] = []
      a.allocPagesBulk(count: r.u8(), gfp: fuzzGFPs[r.u8() % fuzzGFPs.count], into: &pages)
      if !pages.isEmpty { held.append(.pages(pages)) }
    case 8:
      let n = 1 + r.u16() % 2048
      let frozen = r.u8() & 1 == 1
      let p = frozen ? a.allocContigFrozenPages(count: n, gfp: .kernel) : a.allocContigPages(count: n, gfp: .kernel)
      if let p { held.append(.run(p, n, frozen: frozen)) }
    case 9:
      let s = r.u16() % 9000
      let n = r.u16() % 1100
      let g = fuzzGFPs[r.u8() % fuzzGFPs.count]
      do {
        try a.allocContigRange(PFN(s)..<PFN(s + n), gfp: g)
        held.append(g.contains(.comp) && n > 1 ? .block(PFN(s), n.trailingZeroBitCount, frozen: false) : .run(PFN(s), n, frozen: false))
      } catch {}
    case 10:
      a.drainAllPages()
    // Hostile calls.
    case 11: a.freePages(PFN(r.u16() - 2000), order: r.u8() % 14 - 1)
    case 12: a.freeContigRange(PFN(r.u16() % 10000 - 100), count: r.u16() % 3000)
    case 13: a.putPage(PFN(r.u16() % 10000 - 100))
    case 14: a.getPage(PFN(r.u16() % 10000 - 100))
    case 15: a.freeFrozenPages(PFN(r.u16() % 10000 - 100), order: r.u8() % 12)
    case 16: a.freeContigFrozenRange(PFN(r.u16() % 10000 - 100), count: r.u16() % 3000)
    case 17: a.splitPage(PFN(r.u16() % 10000 - 100), order: r.u8() % 12)
    case 18:
      // A page in use given a bad state, then freed (bad_page: quarantined).
      guard !held.isEmpty else { continue }
      let h = held.remove(at: r.u8() % held.count)
      let flags: [PageFlags] = [.locked, .reserved, .hwpoison, .lru, .private, .writeback, .mlocked]
      let f = flags[r.u8() % flags.count]
      switch h {
      case .block(let p, _, _), .run(let p, _, _): a.setPageFlags(p + r.u8() % 2, f)
      case .pages(let ps): a.setPageFlags(ps[0], f)
      }
      release(a, h, how: r.u8())
    default:
      var pfns: [PFN] = []
      let n = r.u8() % 64
      for _ in 0..<n { pfns.append(PFN(r.u16() % 10000 - 100)) }
      a.freePagesBulk(pfns)
    }
  }
  do { try a.verify() } catch { fatalError("verify after the sequence: \(error)") }
  // Free what is still held (well-formed or not), then the allocator must verify again.
  for h in held { release(a, h, how: 0) }
  a.drainAllPages()
  do { try a.verify() } catch { fatalError("verify after cleanup: \(error)") }
}

func release(_ a: PageAllocator, _ h: FuzzHeld, how: Int) {
  switch h {
  case .block(let p, let o, false): how & 1 == 0 ? a.freePages(p, order: o) : { _ = a.putPage(p) }()
  case .block(let p, let o, true): how & 1 == 0 ? a.freeFrozenPages(p, order: o) : a.freeContigFrozenRange(p, count: 1 << o)
  case .run(let p, let n, let frozen):
    if frozen { a.freeContigFrozenRange(p, count: n) } else if how & 1 == 0 { a.freeContigRange(p, count: n) } else {
      a.freePagesBulk((0..<n).map { p + $0 })
    }
  case .pages(let ps): a.freePagesBulk(ps)
  }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func apiSequenceFuzzTest(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
  fuzzOneSequence(UnsafeRawBufferPointer(start: data, count: data == nil ? 0 : size))
  return 0
}

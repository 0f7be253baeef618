import PageAlloc

/// Reads little-endian integers from bytes; past the end it reads zeros, so every byte
/// string decodes to some op sequence.
package struct ByteReader {
  package let bytes: UnsafeRawBufferPointer
  package private(set) var offset = 0

  package init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

  package var atEnd: Bool { offset >= bytes.count }

  package mutating func u8() -> Int {
    guard offset < bytes.count else { return 0 }
    defer { offset += 1 }
    return Int(bytes[offset])
  }

  package mutating func u16() -> Int { u8() | (u8() << 8) }
}

extension APISequence {
  /// The flag sets decoded ops allocate with: the common ones, zone modifiers, and one
  /// with every bit set (the allocator must refuse or ignore what it does not know).
  package static let decodedGFPs: [GFP] = [
    .kernel, .highUserMovable, [.kernel, .reclaimable], .atomic, .nowait, [.kernel, .comp], [.kernel, .dma],
    [.kernel, .dma32], [.atomic, .comp], [.kernel, .zero], [.kernel, .high, .movable], GFP(rawValue: 0xFFFF_FFFF),
  ]

  /// The flag sets of decoded contiguous allocations (the last is refused).
  package static let decodedContigGFPs: [GFP] = [
    .kernel, [.kernel, .comp], [.kernel, .dma], [.kernel, .noWarn], .highUserMovable, .atomic,
  ]

  /// The flag sets of decoded movable allocations (the last is no movable allocation and
  /// makes no call).
  package static let decodedMovableGFPs: [GFP] = [
    .highUserMovable, [.highUserMovable, .noWarn], [.kernel, .movable], [.highUserMovable, .zero], .kernel,
  ]

  package static let decodedFlags: [PageFlags] = [.locked, .reserved, .hwpoison, .lru, .private, .writeback, .mlocked]

  /// Decodes one op from `r`: a selector byte, then the op's arguments. With `hostile`
  /// the selector also reaches ``Op/hostile(_:)`` and ``Op/corrupt(pick:page:flags:way:)``,
  /// on pfns spread over the allocator's span and a little beyond it on both sides.
  package func decode(_ r: inout ByteReader, hostile: Bool) -> Op {
    let span = allocator.pfnSpan.upperBound.value
    func gfp() -> GFP { Self.decodedGFPs[r.u8() % Self.decodedGFPs.count] }
    func way() -> FreeWay { FreeWay(rawValue: r.u8() % FreeWay.allCases.count)! }
    func pfn() -> PFN { PFN(r.u16() % (span + span / 4) - span / 16) }
    switch r.u8() % (hostile ? 28 : 19) {
    case 0, 1: return .alloc(order: r.u8() % (PageGeometry.maxOrder + 2), gfp: gfp(), frozen: false)
    case 2: return .alloc(order: r.u8() % (PageGeometry.maxOrder + 1), gfp: gfp(), frozen: true)
    case 3, 4: return .free(pick: r.u8(), way: way(), choice: UInt64(r.u16()))
    case 5: return .split(pick: r.u8())
    case 6: return .getPut(pick: r.u8(), page: r.u16())
    case 7: return .allocBulk(count: r.u8(), gfp: gfp())
    case 8:
      let n = 1 + r.u16() % 2048
      let g = Self.decodedContigGFPs[r.u8() % Self.decodedContigGFPs.count]
      return .allocContig(count: n, gfp: g, frozen: r.u8() & 1 == 1)
    case 9:
      let s = r.u16() % (span + 1000)
      let n = r.u16() % 1100
      return .allocContigRange(PFN(s)..<PFN(s + n), gfp: gfp(), frozen: r.u8() & 1 == 1)
    case 10: return .drain
    case 11: return .get(pick: r.u8(), page: r.u16())
    case 12: return .put(pick: r.u8())
    case 13:
      return .freeStretch(pick: r.u8(), page: r.u16(), count: 1 + r.u16() % 2048, way: way(), choice: UInt64(r.u8()))
    case 14: return .speculativeGet(pick: r.u8())
    case 15: return .freeScattered(phase: r.u8(), choice: UInt64(r.u8()))
    case 16: return .setCPU(r.u8() % 2)
    case 17:
      let g = Self.decodedMovableGFPs[r.u8() % Self.decodedMovableGFPs.count]
      // Mostly order 0, as movable pages mostly are.
      let o = r.u8()
      return .allocMovable(order: o < 160 ? 0 : o % (PageGeometry.maxOrder + 1), gfp: g)
    case 18:
      switch r.u8() % 8 {
      case 0, 1, 2: return .compact(.zone(order: 1 + r.u8() % PageGeometry.maxOrder))
      case 3, 4: return .compact(.all)
      case 5, 6: return .compact(.proactive)
      default: return .compact(.kcompactd)
      }
    case 19: return .hostile(.freePages(pfn(), order: r.u8() % 14 - 1))
    case 20: return .hostile(.freeContigRange(pfn(), count: r.u16() % 3000))
    case 21: return .hostile(.putPage(pfn()))
    case 22: return .hostile(.getPage(pfn()))
    case 23: return .hostile(.freeFrozenPages(pfn(), order: r.u8() % 12))
    case 24: return .hostile(.freeContigFrozenRange(pfn(), count: r.u16() % 3000))
    case 25: return .hostile(.splitPage(pfn(), order: r.u8() % 12))
    case 26:
      let f = Self.decodedFlags[r.u8() % Self.decodedFlags.count]
      return .corrupt(pick: r.u8(), page: r.u8(), flags: f, way: way())
    default:
      let n = r.u8() % 64
      return .hostile(.freePagesBulk((0..<n).map { _ in pfn() }))
    }
  }
}

extension APISequence {
  /// The bytes ``decode(_:hostile:)`` (with `hostile`) reads back as `ops`, on an
  /// allocator with the same pfn span: how the fuzzer's seed inputs are written. An op
  /// must be decodable: its flags one of the decoded sets, its numbers in the decoded
  /// ranges (a `pick`, `page` or `choice` is cut to the bytes the decoder reads, which picks
  /// the same item only while there are fewer items than that).
  package func encode(_ ops: [Op]) -> [UInt8] {
    let span = allocator.pfnSpan.upperBound.value
    var out: [UInt8] = []
    func u8(_ v: Int) {
      precondition((0..<256).contains(v), "\(v) does not fit a byte")
      out.append(UInt8(v))
    }
    func u16(_ v: Int) {
      precondition((0..<65536).contains(v), "\(v) does not fit two bytes")
      out.append(UInt8(v & 0xff))
      out.append(UInt8(v >> 8))
    }
    func index<T: Equatable>(_ v: T, in all: [T]) -> Int {
      guard let i = all.firstIndex(of: v) else { preconditionFailure("\(v) is not one of the decoded values") }
      return i
    }
    func gfp(_ g: GFP) { u8(index(g, in: Self.decodedGFPs)) }
    func pfn(_ p: PFN) {
      let v = p.value + span / 16
      precondition((0..<(span + span / 4)).contains(v), "pfn \(p) is outside what the decoder reaches")
      u16(v)
    }
    for op in ops {
      switch op {
      case .alloc(let order, let g, false):
        u8(0)
        u8(order)
        gfp(g)
      case .alloc(let order, let g, true):
        u8(2)
        u8(order)
        gfp(g)
      case .free(let pick, let way, let choice):
        u8(3)
        u8(pick & 0xff)
        u8(way.rawValue)
        u16(Int(choice & 0xffff))
      case .split(let pick):
        u8(5)
        u8(pick & 0xff)
      case .getPut(let pick, let page):
        u8(6)
        u8(pick & 0xff)
        u16(page & 0xffff)
      case .allocBulk(let count, let g):
        u8(7)
        u8(count)
        gfp(g)
      case .allocContig(let count, let g, let frozen):
        u8(8)
        u16(count - 1)
        u8(index(g, in: Self.decodedContigGFPs))
        u8(frozen ? 1 : 0)
      case .allocContigRange(let range, let g, let frozen):
        u8(9)
        u16(range.lowerBound.value)
        u16(range.count)
        gfp(g)
        u8(frozen ? 1 : 0)
      case .drain:
        u8(10)
      case .get(let pick, let page):
        u8(11)
        u8(pick & 0xff)
        u16(page & 0xffff)
      case .put(let pick):
        u8(12)
        u8(pick & 0xff)
      case .freeStretch(let pick, let page, let count, let way, let choice):
        u8(13)
        u8(pick & 0xff)
        u16(page & 0xffff)
        u16(count - 1)
        u8(way.rawValue)
        u8(Int(choice & 0xff))
      case .speculativeGet(let pick):
        u8(14)
        u8(pick & 0xff)
      case .freeScattered(let phase, let choice):
        u8(15)
        u8(phase & 0xff)
        u8(Int(choice & 0xff))
      case .setCPU(let cpu):
        guard let cpu else { preconditionFailure("setCPU(nil) is not decodable") }
        u8(16)
        u8(cpu)
      case .allocMovable(let order, let g):
        u8(17)
        u8(index(g, in: Self.decodedMovableGFPs))
        precondition(order == 0 || (1...PageGeometry.maxOrder).contains(order), "order \(order) is not decodable")
        // Below 160 decodes as order 0; from 160 on, the byte modulo 11.
        u8(order == 0 ? 0 : 165 + (order - 165 % 11 + 11) % 11)
      case .compact(let c):
        u8(18)
        switch c {
        case .zone(let order):
          precondition((1...PageGeometry.maxOrder).contains(order), "order \(order) is not decodable")
          u8(0)
          u8(order - 1)
        case .all: u8(3)
        case .proactive: u8(5)
        case .kcompactd: u8(7)
        }
      case .hostile(.freePages(let p, let order)):
        u8(19)
        pfn(p)
        u8(order + 1)
      case .hostile(.freeContigRange(let p, let count)):
        u8(20)
        pfn(p)
        u16(count)
      case .hostile(.putPage(let p)):
        u8(21)
        pfn(p)
      case .hostile(.getPage(let p)):
        u8(22)
        pfn(p)
      case .hostile(.freeFrozenPages(let p, let order)):
        u8(23)
        pfn(p)
        u8(order)
      case .hostile(.freeContigFrozenRange(let p, let count)):
        u8(24)
        pfn(p)
        u16(count)
      case .hostile(.splitPage(let p, let order)):
        u8(25)
        pfn(p)
        u8(order)
      case .corrupt(let pick, let page, let flags, let way):
        u8(26)
        u8(index(flags, in: Self.decodedFlags))
        u8(pick & 0xff)
        u8(page & 0xff)
        u8(way.rawValue)
      case .hostile(.freePagesBulk(let pfns)):
        u8(27)
        u8(pfns.count)
        for p in pfns { pfn(p) }
      }
    }
    return out
  }
}

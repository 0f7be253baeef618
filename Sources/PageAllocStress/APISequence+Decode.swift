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
  static let decodedGFPs: [GFP] = [
    .kernel, .highUserMovable, [.kernel, .reclaimable], .atomic, .nowait, [.kernel, .comp], [.kernel, .dma],
    [.kernel, .dma32], [.atomic, .comp], [.kernel, .zero], [.kernel, .high, .movable], GFP(rawValue: 0xFFFF_FFFF),
  ]

  /// The flag sets of decoded contiguous allocations (the last is refused).
  static let decodedContigGFPs: [GFP] = [
    .kernel, [.kernel, .comp], [.kernel, .dma], [.kernel, .noWarn], .highUserMovable, .atomic,
  ]

  /// The flag sets of decoded movable allocations (the last is no movable allocation and
  /// makes no call).
  static let decodedMovableGFPs: [GFP] = [
    .highUserMovable, [.highUserMovable, .noWarn], [.kernel, .movable], [.highUserMovable, .zero], .kernel,
  ]

  static let decodedFlags: [PageFlags] = [.locked, .reserved, .hwpoison, .lru, .private, .writeback, .mlocked]

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

import PageAlloc
import _PageAllocUtilities
import Glibc

/// One `mm_page_alloc` / `mm_page_free` line of a kernel trace, or a line that names one
/// of them but does not parse.
@usableFromInline
package struct ReplayEvent {
  @usableFromInline package enum Kind: UInt8 {
    case alloc = 0
    case free = 1
    /// `pfn` holds the index of the reason in ``ParsedTrace/malformedReasons``.
    case malformed = 2
  }
  /// The pfn (below 2^32 - 2), or for `.malformed` the reason's index.
  @usableFromInline package var pfn32: UInt32
  @usableFromInline package var line: Int32
  @usableFromInline package var cpu: UInt16
  @usableFromInline package var order: UInt8
  @usableFromInline package var kind: Kind
  /// `migratetype=` of an mm_page_alloc line (0...5), or ``ReplayEvent/unknownType``.
  @usableFromInline package var migrateType: UInt8

  @usableFromInline package static let unknownType: UInt8 = 7

  @inlinable package var pfn: Int { Int(pfn32) }

  @inlinable
  init(pfn: Int, line: Int32, cpu: UInt16, order: UInt8, kind: Kind, migrateType: UInt8 = ReplayEvent.unknownType) {
    pfn32 = UInt32(truncatingIfNeeded: pfn)
    self.line = line
    self.cpu = cpu
    self.order = order
    self.kind = kind
    self.migrateType = migrateType
  }
}

/// What the parser found in a whole trace.
@usableFromInline
package struct ParsedTrace {
  @usableFromInline package var events: ContiguousArray<ReplayEvent> = []
  @usableFromInline package var malformedReasons: [String] = []
  @usableFromInline package var linesRead = 0
  /// Lines that are not an event we use (headers, other events, mm_page_free_batched...).
  @usableFromInline package var linesIgnored = 0
  /// `mm_page_alloc` lines of failed allocations (page=0, pfn=0).
  @usableFromInline package var allocFailures = 0
  @usableFromInline package var maxCPU = 0

  package init() {}
}

/// A byte-level parser of kmem trace text: the ftrace `trace` file, `trace-cmd report` and
/// `perf script` output.
///
/// A line is used when it names `mm_page_alloc` or `mm_page_free` as a token that starts
/// after a space or a colon (`kmem:mm_page_alloc:` in perf script) and ends with a colon.
/// Its fields are found by key (`pfn=`, `order=`), so extra fields (`nr_free=`, gfp flags
/// in any form, trace-cmd's padding) do not matter; `pfn=` may be `0x` hex or decimal.
/// The CPU is the last `[digits]` before the event name. Everything else, including
/// `mm_page_free_batched` (the companion of an `mm_page_free` of the same page), the
/// `#` header lines and blank lines, is ignored and counted.
///
/// The hot loop reads bytes through an unsafe pointer: no `String` is made for a good
/// line.
@usableFromInline
package enum KmemTraceParser {
  /// The largest pfn a replay accepts (PageAlloc pfns are 32-bit).
  package static let pfnLimit = Int(UInt32.max) - 2

  package static func parse(_ buffer: UnsafeRawBufferPointer) -> ParsedTrace {
    var out = ParsedTrace()
    out.events.reserveCapacity(buffer.count / 160 + 16)
    feed(buffer, &out)
    return out
  }

  /// Parses every line of `buffer` into `out`, numbering lines on from `out.linesRead`.
  /// A streaming caller feeds whole lines (up to a newline) and the unterminated last line
  /// at the end.
  package static func feed(_ buffer: UnsafeRawBufferPointer, _ out: inout ParsedTrace) {
    guard let base = buffer.baseAddress?.assumingMemoryBound(to: UInt8.self), buffer.count > 0 else { return }
    let n = buffer.count
    var i = 0
    var line = Int32(truncatingIfNeeded: out.linesRead)
    while i < n {
      line &+= 1
      var e = n
      if let p = memchr(base + i, 0x0A, n &- i) {
        e = UnsafeRawPointer(p).assumingMemoryBound(to: UInt8.self) - base
      }
      parseLine(base, i, e, line, &out)
      i = e &+ 1
    }
    out.linesRead = Int(line)
  }

  @inline(__always)
  static func isDigit(_ c: UInt8) -> Bool { c &- 0x30 < 10 }

  @inline(__always)
  static func parseLine(_ b: UnsafePointer<UInt8>, _ start: Int, _ end: Int, _ line: Int32, _ out: inout ParsedTrace) {
    // Find "mm_page_" after a space or a colon.
    // memchr (vectorised) jumps from one 'm' to the next.
    var j = start &+ 1
    let last = end &- 8
    var name = -1
    while j <= last {
      guard let m = memchr(b + j, 0x6D, last &+ 1 &- j) else { break }
      j = UnsafeRawPointer(m).assumingMemoryBound(to: UInt8.self) - b
      if b[j &+ 1] == 0x6D && b[j &+ 2] == 0x5F && b[j &+ 3] == 0x70 && b[j &+ 4] == 0x61
        && b[j &+ 5] == 0x67 && b[j &+ 6] == 0x65 && b[j &+ 7] == 0x5F  // "mm_page_"
        && (b[j &- 1] == 0x20 || b[j &- 1] == 0x3A)
      {
        name = j
        break
      }
      j &+= 1
    }
    if name < 0 {
      out.linesIgnored &+= 1
      return
    }
    // "alloc:" or "free:" right after "mm_page_".
    var k = name &+ 8
    var kind: ReplayEvent.Kind
    if k &+ 6 <= end && b[k] == 0x61 && b[k &+ 1] == 0x6C && b[k &+ 2] == 0x6C && b[k &+ 3] == 0x6F
      && b[k &+ 4] == 0x63 && b[k &+ 5] == 0x3A
    {
      kind = .alloc
      k &+= 6
    } else if k &+ 5 <= end && b[k] == 0x66 && b[k &+ 1] == 0x72 && b[k &+ 2] == 0x65 && b[k &+ 3] == 0x65
      && b[k &+ 4] == 0x3A
    {
      kind = .free
      k &+= 5
    } else {
      out.linesIgnored &+= 1
      return
    }
    let eventName = kind == .alloc ? "mm_page_alloc" : "mm_page_free"
    // CPU: the last "[digits]" before the name.
    var cpu = 0
    var c = name &- 1
    while c > start {
      if b[c] == 0x5D {  // ']'
        var d = c &- 1
        var v = 0
        var mul = 1
        while d >= start && isDigit(b[d]) && mul <= 100_000 {
          v &+= Int(b[d] &- 0x30) &* mul
          mul &*= 10
          d &-= 1
        }
        if d >= start && d < c &- 1 && b[d] == 0x5B {  // '['
          cpu = v
          break
        }
      }
      c &-= 1
    }
    // Fields.
    guard let pfnAt = findKey(b, k, end, 0x70, 0x66, 0x6E) else {  // "pfn="
      malformed(&out, line, "\(eventName) line without pfn=")
      return
    }
    var pfn = 0
    var q = pfnAt
    var digits = 0
    if q &+ 1 < end && b[q] == 0x30 && (b[q &+ 1] == 0x78 || b[q &+ 1] == 0x58) {
      q &+= 2
      while q < end {
        let ch = b[q]
        var d: Int
        if isDigit(ch) {
          d = Int(ch &- 0x30)
        } else if ch | 0x20 >= 0x61 && ch | 0x20 <= 0x66 {
          d = Int((ch | 0x20) &- 0x61 &+ 10)
        } else {
          break
        }
        pfn = pfn &<< 4 | d
        digits &+= 1
        q &+= 1
        if digits > 15 { break }
      }
    } else {
      while q < end && isDigit(b[q]) && digits <= 18 {
        pfn = pfn &* 10 &+ Int(b[q] &- 0x30)
        digits &+= 1
        q &+= 1
      }
    }
    if digits == 0 || !isFieldEnd(b, q, end) {
      malformed(&out, line, "\(eventName): bad pfn= value '\(fieldText(b, pfnAt, end))'")
      return
    }
    guard let orderAt = findKey4(b, k, end) else {  // "order="
      malformed(&out, line, "\(eventName) line without order=")
      return
    }
    var order = 0
    q = orderAt
    digits = 0
    while q < end && isDigit(b[q]) && digits < 4 {
      order = order &* 10 &+ Int(b[q] &- 0x30)
      digits &+= 1
      q &+= 1
    }
    if digits == 0 || !isFieldEnd(b, q, end) {
      malformed(&out, line, "\(eventName): bad order= value '\(fieldText(b, orderAt, end))'")
      return
    }
    if order > PageGeometry.maxOrder {
      malformed(&out, line, "\(eventName): order \(order) is above MAX_PAGE_ORDER (10)")
      return
    }
    if kind == .alloc && pfn == 0 && !hasNonNullPage(b, k, end) {
      // A failed allocation: page=0 (or "(null)", or no page=) and pfn=0.
      out.allocFailures &+= 1
      return
    }
    if pfn > pfnLimit &- (1 &<< order) {
      malformed(&out, line, "\(eventName): pfn \(PFN(pfn)) is beyond the supported 2^32-2")
      return
    }
    if cpu > out.maxCPU { out.maxCPU = cpu }
    var mt = ReplayEvent.unknownType
    if kind == .alloc, let at = findKeyMigratetype(b, q, end), at < end, isDigit(b[at]),
      b[at] &- 0x30 < UInt8(MigrateType.count), isFieldEnd(b, at &+ 1, end)
    {
      mt = b[at] &- 0x30
    }
    out.events.append(
      ReplayEvent(
        pfn: pfn, line: line, cpu: UInt16(truncatingIfNeeded: cpu), order: UInt8(order), kind: kind, migrateType: mt))
  }

  /// Whether the line has a `page=` field that is not a null pointer (all zeros, `0x0`,
  /// `(null)`, `(nil)`): then pfn=0 is a real allocation of pfn 0, not a failure.
  @inline(never)
  static func hasNonNullPage(_ b: UnsafePointer<UInt8>, _ from: Int, _ end: Int) -> Bool {
    var j = from
    while j &+ 5 <= end {
      if b[j] == 0x70 && b[j &+ 1] == 0x61 && b[j &+ 2] == 0x67 && b[j &+ 3] == 0x65 && b[j &+ 4] == 0x3D
        && (b[j &- 1] == 0x20 || b[j &- 1] == 0x09)
      {
        var q = j &+ 5
        if q &+ 1 < end && b[q] == 0x30 && (b[q &+ 1] == 0x78 || b[q &+ 1] == 0x58) { q &+= 2 }
        if q < end && b[q] == 0x28 { return false }  // "(null)", "(nil)"
        var any = false
        while q < end && !isFieldEnd(b, q, end) {
          if b[q] != 0x30 { any = true }
          q &+= 1
        }
        return any
      }
      j &+= 1
    }
    return false
  }

  /// A number ends at a space, a tab, a carriage return or the end of the line.
  @inline(__always)
  static func isFieldEnd(_ b: UnsafePointer<UInt8>, _ q: Int, _ end: Int) -> Bool {
    q >= end || b[q] == 0x20 || b[q] == 0x09 || b[q] == 0x0D
  }

  /// The index after `xyz=` (a three-letter key preceded by a space), or nil.
  @inline(__always)
  static func findKey(_ b: UnsafePointer<UInt8>, _ from: Int, _ end: Int, _ x: UInt8, _ y: UInt8, _ z: UInt8) -> Int? {
    var j = from
    while j &+ 4 <= end {
      if b[j] == x && b[j &+ 1] == y && b[j &+ 2] == z && b[j &+ 3] == 0x3D && (b[j &- 1] == 0x20 || b[j &- 1] == 0x09)
      {
        return j &+ 4
      }
      j &+= 1
    }
    return nil
  }

  /// The index after ` migratetype=`, or nil (it follows order= in mm_page_alloc).
  @inline(__always)
  static func findKeyMigratetype(_ b: UnsafePointer<UInt8>, _ from: Int, _ end: Int) -> Int? {
    var j = from
    while j &+ 12 <= end {
      if b[j] == 0x6D && b[j &+ 1] == 0x69 && b[j &+ 2] == 0x67 && b[j &+ 3] == 0x72 && b[j &+ 4] == 0x61
        && b[j &+ 5] == 0x74 && b[j &+ 6] == 0x65 && b[j &+ 7] == 0x74 && b[j &+ 8] == 0x79 && b[j &+ 9] == 0x70
        && b[j &+ 10] == 0x65 && b[j &+ 11] == 0x3D && (b[j &- 1] == 0x20 || b[j &- 1] == 0x09)
      {
        return j &+ 12
      }
      j &+= 1
    }
    return nil
  }

  /// The index after ` order=`, or nil.
  @inline(__always)
  static func findKey4(_ b: UnsafePointer<UInt8>, _ from: Int, _ end: Int) -> Int? {
    var j = from
    while j &+ 6 <= end {
      if b[j] == 0x6F && b[j &+ 1] == 0x72 && b[j &+ 2] == 0x64 && b[j &+ 3] == 0x65 && b[j &+ 4] == 0x72
        && b[j &+ 5] == 0x3D && (b[j &- 1] == 0x20 || b[j &- 1] == 0x09)
      {
        return j &+ 6
      }
      j &+= 1
    }
    return nil
  }

  static func fieldText(_ b: UnsafePointer<UInt8>, _ from: Int, _ end: Int) -> String {
    var q = from
    while q < end && !isFieldEnd(b, q, end) && q &- from < 40 { q &+= 1 }
    let bytes = UnsafeBufferPointer(start: b + from, count: q &- from)
    return String(decoding: bytes, as: UTF8.self)
  }

  @inline(never)
  static func malformed(_ out: inout ParsedTrace, _ line: Int32, _ reason: String) {
    out.events.append(
      ReplayEvent(pfn: out.malformedReasons.count, line: line, cpu: 0, order: 0, kind: .malformed))
    out.malformedReasons.append(reason)
  }
}

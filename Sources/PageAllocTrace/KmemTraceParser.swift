import PageAlloc
import _PageAllocUtilities
import Glibc

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

  package static func parse(_ buffer: UnsafeRawBufferPointer, detailed: Bool = false) -> ParsedTrace {
    var out = ParsedTrace(detailed: detailed)
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
    if start < end && b[start] == 0x23 {  // '#': a header line
      parseHeader(b, start, end, &out)
      out.linesIgnored &+= 1
      return
    }
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
    // "alloc:" or "free:" right after "mm_page_" (and the other kmem events when detailed).
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
    } else if out.detailed, let (other, after) = otherEvent(b, k, end) {
      kind = other
      k = after
    } else {
      out.linesIgnored &+= 1
      return
    }
    let time = out.detailed ? timestamp(b, start, name) : 0
    let eventName = kind.eventName
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
    // The context: the third of the five latency characters after "] ".
    var context = ReplayEvent.task
    if out.detailed && c > start && c &+ 7 < name && b[c] == 0x5D && b[c &+ 1] == 0x20 && b[c &+ 7] == 0x20 {
      switch b[c &+ 4] {
      case 0x73: context = ReplayEvent.softirq  // 's'
      case 0x68, 0x48: context = ReplayEvent.hardirq  // 'h', 'H'
      case 0x7A, 0x5A: context = ReplayEvent.nmi  // 'z', 'Z'
      default: break
      }
    }
    // Fields.
    guard let pfnAt = findKey(b, k, end, 0x70, 0x66, 0x6E) else {  // "pfn="
      malformed(&out, line, "\(eventName) line without pfn=", time)
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
      malformed(&out, line, "\(eventName): bad pfn= value '\(fieldText(b, pfnAt, end))'", time)
      return
    }
    if kind == .extfrag {
      parseExtfrag(b, k, end, pfn, line, cpu, time, context, &out)
      return
    }
    var order = 0
    if kind != .freeBatched {  // mm_page_free_batched always prints order=0
      guard let orderAt = findKey4(b, k, end) else {  // "order="
        malformed(&out, line, "\(eventName) line without order=", time)
        return
      }
      q = orderAt
      digits = 0
      while q < end && isDigit(b[q]) && digits < 4 {
        order = order &* 10 &+ Int(b[q] &- 0x30)
        digits &+= 1
        q &+= 1
      }
      if digits == 0 || !isFieldEnd(b, q, end) {
        malformed(&out, line, "\(eventName): bad order= value '\(fieldText(b, orderAt, end))'", time)
        return
      }
      if order > PageGeometry.maxOrder {
        malformed(&out, line, "\(eventName): order \(order) is above MAX_PAGE_ORDER (10)", time)
        return
      }
    }
    if kind == .alloc && pfn == 0 && !hasNonNullPage(b, k, end) {
      // A failed allocation: page=0 (or "(null)", or no page=) and pfn=0.
      out.allocFailures &+= 1
      return
    }
    if pfn > pfnLimit &- (1 &<< order) {
      malformed(&out, line, "\(eventName): pfn \(PFN(pfn)) is beyond the supported 2^32-2", time)
      return
    }
    if cpu > out.maxCPU { out.maxCPU = cpu }
    var mt = ReplayEvent.unknownType
    var aux: UInt8 = 0
    if kind == .alloc || kind == .drain || kind == .zoneLocked {
      if let at = findKeyMigratetype(b, q, end), at < end, isDigit(b[at]),
        b[at] &- 0x30 < UInt8(MigrateType.count), isFieldEnd(b, at &+ 1, end)
      {
        mt = b[at] &- 0x30
      }
      if kind == .zoneLocked, let at = findField(b, q, end, "percpu_refill="), at < end, b[at] == 0x31 {
        aux = 1
      }
    }
    out.append(
      ReplayEvent(
        pfn: pfn, line: line, cpu: UInt16(truncatingIfNeeded: cpu), order: UInt8(order), kind: kind, migrateType: mt,
        aux: aux, context: context),
      time: time)
  }

  /// The kmem events after "mm_page_" that only a detailed parse records, and the index
  /// after their name's colon.
  static func otherEvent(_ b: UnsafePointer<UInt8>, _ k: Int, _ end: Int) -> (ReplayEvent.Kind, Int)? {
    for kind in [ReplayEvent.Kind.freeBatched, .drain, .zoneLocked, .extfrag] {
      let suffix = kind.eventSuffix.utf8
      let n = suffix.count
      guard k &+ n &+ 1 <= end else { continue }
      var i = 0
      var match = true
      for ch in suffix {
        if b[k &+ i] != ch {
          match = false
          break
        }
        i &+= 1
      }
      if match && b[k &+ n] == 0x3A { return (kind, k &+ n &+ 1) }
    }
    return nil
  }

  /// The fields of an mm_page_alloc_extfrag line (pfn already read).
  static func parseExtfrag(
    _ b: UnsafePointer<UInt8>, _ k: Int, _ end: Int, _ pfn: Int, _ line: Int32, _ cpu: Int, _ time: UInt64,
    _ context: UInt8, _ out: inout ParsedTrace
  ) {
    func number(_ key: StaticString, limit: Int) -> Int? {
      guard let at = findField(b, k, end, key) else { return nil }
      var v = 0
      var q = at
      while q < end && isDigit(b[q]) && q &- at < 4 {
        v = v &* 10 &+ Int(b[q] &- 0x30)
        q &+= 1
      }
      return q > at && isFieldEnd(b, q, end) && v <= limit ? v : nil
    }
    guard let allocOrder = number("alloc_order=", limit: PageGeometry.maxOrder),
      let fallbackOrder = number("fallback_order=", limit: PageGeometry.maxOrder),
      let allocType = number("alloc_migratetype=", limit: MigrateType.count - 1),
      let fallbackType = number("fallback_migratetype=", limit: MigrateType.count - 1)
    else {
      malformed(&out, line, "mm_page_alloc_extfrag: missing or bad order or migratetype fields", time)
      return
    }
    if pfn > pfnLimit &- (1 &<< allocOrder) {
      malformed(&out, line, "mm_page_alloc_extfrag: pfn \(PFN(pfn)) is beyond the supported 2^32-2", time)
      return
    }
    if cpu > out.maxCPU { out.maxCPU = cpu }
    let change = number("change_ownership=", limit: 1) ?? 0
    let aux = UInt8(fallbackOrder) | UInt8(fallbackType) &<< 4 | (change == 1 ? 0x80 : 0)
    out.append(
      ReplayEvent(
        pfn: pfn, line: line, cpu: UInt16(truncatingIfNeeded: cpu), order: UInt8(allocOrder), kind: .extfrag,
        migrateType: UInt8(allocType), aux: aux, context: context),
      time: time)
  }

  /// The `#P:` and `entries-in-buffer/entries-written:` of an ftrace header line.
  @inline(never)
  static func parseHeader(_ b: UnsafePointer<UInt8>, _ start: Int, _ end: Int, _ out: inout ParsedTrace) {
    func number(at i: Int) -> (Int, Int)? {
      var q = i
      var v = 0
      while q < end && isDigit(b[q]) && q &- i < 12 {
        v = v &* 10 &+ Int(b[q] &- 0x30)
        q &+= 1
      }
      return q > i ? (v, q) : nil
    }
    var j = start
    while j &+ 3 <= end {
      if b[j] == 0x23 && b[j &+ 1] == 0x50 && b[j &+ 2] == 0x3A, let (n, _) = number(at: j &+ 3) {  // "#P:"
        out.headerCPUs = n
      }
      j &+= 1
    }
    let key: StaticString = "entries-in-buffer/entries-written:"
    if let at = findText(b, start, end, key) {
      var q = at
      while q < end && b[q] == 0x20 { q &+= 1 }
      if let (inBuffer, slash) = number(at: q), slash < end, b[slash] == 0x2F, let (written, _) = number(at: slash &+ 1)
      {
        out.entriesInBuffer = inBuffer
        out.entriesWritten = written
      }
    }
  }

}

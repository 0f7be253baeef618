import PageAlloc
import _PageAllocUtilities
import Glibc

// The parser's field scanners: the timestamp, keys and their values found by bytes.

extension KmemTraceParser {
  /// The timestamp before the event name: the `SECONDS.FRACTION:` that ftrace, trace-cmd
  /// and perf script all print just before it, in nanoseconds (0 when there is none).
  static func timestamp(_ b: UnsafePointer<UInt8>, _ start: Int, _ name: Int) -> UInt64 {
    var j = name &- 1
    let stop = max(start, name &- 40)
    // The colon right after the number.
    while j > stop && !(b[j] == 0x3A && isDigit(b[j &- 1])) { j &-= 1 }
    guard j > stop else { return 0 }
    let e = j
    var s = e &- 1
    while s >= start && (isDigit(b[s]) || b[s] == 0x2E) { s &-= 1 }
    s &+= 1
    var secs: UInt64 = 0
    var frac: UInt64 = 0
    var fracDigits = 0
    var inFrac = false
    while s < e {
      let ch = b[s]
      if ch == 0x2E {
        inFrac = true
      } else if inFrac {
        if fracDigits < 9 {
          frac = frac &* 10 &+ UInt64(ch &- 0x30)
          fracDigits &+= 1
        }
      } else {
        secs = secs &* 10 &+ UInt64(ch &- 0x30)
      }
      s &+= 1
    }
    while fracDigits < 9 {
      frac &*= 10
      fracDigits &+= 1
    }
    return secs &* 1_000_000_000 &+ frac
  }

  /// The index after `key` (which ends in '=') preceded by a space or tab, from `from` on.
  static func findField(_ b: UnsafePointer<UInt8>, _ from: Int, _ end: Int, _ key: StaticString) -> Int? {
    guard let at = findText(b, from, end, key, fieldStart: true) else { return nil }
    return at
  }

  /// The index after the first occurrence of `text` in `[from, end)` (with `fieldStart`,
  /// only where a space or a tab precedes it).
  static func findText(
    _ b: UnsafePointer<UInt8>, _ from: Int, _ end: Int, _ text: StaticString, fieldStart: Bool = false
  ) -> Int? {
    let t = text.utf8Start
    let n = text.utf8CodeUnitCount
    var j = from
    while j &+ n <= end {
      if b[j] == t[0] && (!fieldStart || b[j &- 1] == 0x20 || b[j &- 1] == 0x09) {
        var i = 1
        while i < n && b[j &+ i] == t[i] { i &+= 1 }
        if i == n { return j &+ n }
      }
      j &+= 1
    }
    return nil
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
  static func malformed(_ out: inout ParsedTrace, _ line: Int32, _ reason: String, _ time: UInt64) {
    out.append(ReplayEvent(pfn: out.malformedReasons.count, line: line, cpu: 0, order: 0, kind: .malformed), time: time)
    out.malformedReasons.append(reason)
  }
}

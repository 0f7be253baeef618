import PageAlloc
import _PageAllocUtilities
import Glibc
import Synchronization

/// The process's mapping budget: Linux refuses a new VMA once a process has
/// `vm.max_map_count` of them (65530 by default), and `mmap` then fails with `ENOMEM`
/// (so would `malloc`, thread creation and `dlopen` in the rest of the program).
///
/// Every vmalloc area is charged, before it is mapped, an upper bound of the VMAs it can
/// add: one per physically contiguous run of its pages (each run is one `mmap`) plus one
/// for the `PROT_NONE` stretch (guard page and the rest of the reservation) it splits off.
/// Charges are held in one process-wide counter shared by every ``VMalloc`` instance, and
/// per instance against its own limit; an area that does not fit makes `vmalloc` return
/// `nil` (the user-space analogue of running out of vmalloc space: "vmap allocation for
/// size ... failed"). The process budget leaves `headroom` mappings for the rest of the
/// program.
enum MapCountBudget {
  /// Mappings left to the rest of the program: libraries, malloc arenas, thread stacks.
  static let headroom = 8192

  /// `vm.max_map_count` (65530 when it cannot be read).
  static let maxMapCount: Int = {
    guard let f = fopen("/proc/sys/vm/max_map_count", "r") else { return 65530 }
    defer { fclose(f) }
    var buf = [CChar](repeating: 0, count: 64)
    guard fgets(&buf, Int32(buf.count), f) != nil else { return 65530 }
    let text = buf.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }.filter(\.isNumber)
    guard let v = Int(text), v > 0 else { return 65530 }
    return v
  }()

  /// What all VMalloc instances of the process may charge together.
  static let processLimit: Int = max(maxMapCount - headroom, maxMapCount / 2)

  /// Mappings charged by all instances.
  static let processCharged = Atomic<Int>(0)

  static func charge(_ n: Int) -> Bool {
    let now = processCharged.wrappingAdd(n, ordering: .relaxed).newValue
    if now > processLimit {
      processCharged.wrappingSubtract(n, ordering: .relaxed)
      return false
    }
    return true
  }

  static func uncharge(_ n: Int) { processCharged.wrappingSubtract(n, ordering: .relaxed) }
}

/// Lines of `/proc/self/maps` (the process's VMAs) that lie inside `range`, with their
/// permissions and file offsets: what tests use to count an instance's mappings.
public struct ProcessMapping: Sendable, Hashable {
  public var start: UInt
  public var end: UInt
  /// The `rwxp` / `rw-s` field.
  public var permissions: String
  public var fileOffset: Int
  /// The path column (`/memfd:pagealloc (deleted)` for the arena).
  public var path: String
}

/// The VMAs of this process that overlap `lower..<upper`, from `/proc/self/maps`.
public func processMappings(in lower: UInt, _ upper: UInt) -> [ProcessMapping] {
  guard let f = fopen("/proc/self/maps", "r") else { return [] }
  defer { fclose(f) }
  var out: [ProcessMapping] = []
  var buf = [CChar](repeating: 0, count: 4096)
  while fgets(&buf, Int32(buf.count), f) != nil {
    let line = buf.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    let fields = line.split(separator: " ", maxSplits: 5, omittingEmptySubsequences: true)
    guard fields.count >= 5 else { continue }
    let range = fields[0].split(separator: "-")
    guard range.count == 2, let s = UInt(range[0], radix: 16), let e = UInt(range[1], radix: 16) else { continue }
    guard s < upper && e > lower else { continue }
    let path = fields.count > 5 ? fields[5].trimmingCharacters(in: " \n") : ""
    out.append(
      ProcessMapping(
        start: s, end: e, permissions: String(fields[1]), fileOffset: Int(fields[2], radix: 16) ?? 0, path: path))
  }
  return out
}

extension Substring {
  fileprivate func trimmingCharacters(in set: String) -> String {
    var s = self[...]
    while let c = s.first, set.contains(c) { s = s.dropFirst() }
    while let c = s.last, set.contains(c) { s = s.dropLast() }
    return String(s)
  }
}

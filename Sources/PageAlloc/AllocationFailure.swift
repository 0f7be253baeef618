import Glibc

/// Why ``PageAllocator/allocate(order:gfp:)`` handed out no block: the order and flags asked
/// for, and the reason.
///
/// The reason is worked out after the failure, off the allocation fast path: an invalid
/// order is plain from the request; an injected failure is noted by the core for the
/// calling thread when ``FaultInjection`` fails the request; otherwise the zones the request
/// may use are looked at again. That last look sees the allocator just after the failure:
/// under concurrent frees it may find a zone back above its watermark and say
/// ``Reason/noFreeBlock`` where the walk found every zone below it.
public struct AllocationFailure: Error, Hashable, Sendable, CustomStringConvertible {
  /// Why no block of the order could be handed out.
  public enum Reason: Hashable, Sendable, CustomStringConvertible {
    /// The order is outside `0...MAX_PAGE_ORDER`.
    case invalidOrder
    /// Fault injection (`fail_page_alloc`, ``FaultInjection``) failed the request before
    /// any zone was looked at.
    case injected
    /// Every zone the request may use is below its watermark: the min watermark, less the
    /// reserves the flags may dip into (`.high`). The kernel would reclaim or compact here;
    /// PageAlloc has neither.
    case belowWatermark
    /// A zone is above its watermark, but none has a free block of the order or larger
    /// that the request's migratetype may take: free memory is fragmented into smaller
    /// blocks.
    case noFreeBlock

    public var description: String {
      switch self {
      case .invalidOrder: "order outside 0...\(PageGeometry.maxOrder)"
      case .injected: "failure injected (fail_page_alloc)"
      case .belowWatermark: "every zone is below its watermark"
      case .noFreeBlock: "no free block of that order (memory is fragmented)"
      }
    }
  }

  /// The order asked for.
  public var order: Int
  /// The flags asked with.
  public var gfp: GFP
  /// Why it failed.
  public var reason: Reason

  public init(order: Int, gfp: GFP, reason: Reason) {
    self.order = order
    self.gfp = gfp
    self.reason = reason
  }

  /// warn_alloc's words and the reason, e.g. `page allocation failure: order:9,
  /// mode:0xcc0(GFP_KERNEL): every zone is below its watermark`.
  public var description: String {
    "page allocation failure: order:\(order), mode:0x\(String(gfp.rawValue, radix: 16))(\(gfp)): \(reason)"
  }
}

extension PageAllocator {
  /// The failure ``allocate(order:gfp:)`` throws once `allocInternal` returned nil on this
  /// thread. Out of line: only the failure path pays for it.
  @usableFromInline @inline(never)
  func allocationFailure(_ order: Int, _ gfp: GFP) -> AllocationFailure {
    let reason: AllocationFailure.Reason
    if order < 0 || order > PageGeometry.maxOrder {
      reason = .invalidOrder
    } else if AllocationFailureNote.lastWasInjected() {
      reason = .injected
    } else {
      reason = anyZoneAboveMinWatermark(order, gfp) ? .noFreeBlock : .belowWatermark
    }
    return AllocationFailure(order: order, gfp: gfp, reason: reason)
  }

  /// Whether a zone of the request's zonelist has free pages above the watermark of the
  /// zonelist walk's last pass (the min watermark less the reserves `gfp` may use), whether
  /// or not it has a free block of the order.
  func anyZoneAboveMinWatermark(_ order: Int, _ gfp: GFP) -> Bool {
    let highest = gfp.highestZone.rawValue
    for zi in zonelist(for: highest) {
      let z = zones + zi
      if zoneFreePagesOK(z, order, reserveMark(z.pointee.wmarkMin, gfp), highest) { return true }
    }
    return false
  }
}

/// What the core's allocation-failure report (`reportAllocFailure`) notes for the calling
/// thread: whether the failure it reported was injected. Every failed allocation goes
/// through that report before `allocInternal` returns nil, so right after a nil the note
/// describes that very failure. A pthread key: read and written on failure paths only.
enum AllocationFailureNote {
  static let key: pthread_key_t = {
    var k = pthread_key_t()
    let rc = pthread_key_create(&k, nil)
    precondition(rc == 0, "pthread_key_create failed: \(rc)")
    return k
  }()

  static func record(injected: Bool) {
    if injected || pthread_getspecific(key) != nil {
      pthread_setspecific(key, injected ? UnsafeRawPointer(bitPattern: 1) : nil)
    }
  }

  static func lastWasInjected() -> Bool { pthread_getspecific(key) != nil }
}

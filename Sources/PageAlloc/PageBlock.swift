import Synchronization

/// An allocated block of `2^order` pages, owned by this value: the one reference that
/// ``PageAllocator/allocPages(order:gfp:)`` hands out, as a move-only handle.
///
/// Get one with ``PageAllocator/allocate(order:gfp:)``. The block goes back to the
/// allocator exactly once: by ``free()``, by ``split()`` (its pages then belong to the
/// ``PageRun`` it returns), by ``relinquish()`` (the caller takes over the pfn and frees it
/// with the PFN API), or, when none of these ran, when the handle is dropped: its `deinit`
/// frees the block (`__free_pages()`). The handle cannot be copied, so the block cannot be
/// freed twice through it.
///
/// ```swift
/// var block = try allocator.allocate(order: 2)          // 4 pages, 16 KiB
/// block.withMutableBytes { $0.storeBytes(of: 7, toByteOffset: 0, as: UInt64.self) }
/// let run = block.split()                                 // 4 order-0 pages
/// ```
///
/// **The allocator must outlive its handles.** A handle keeps an `unowned(unsafe)`
/// reference to its ``PageAllocator`` (no reference counting on the allocation and free
/// paths, and `discard self` needs trivially destroyed fields), so the program must hold a
/// strong reference to the allocator for as long as any of its handles lives, for example
/// by keeping it in the same scope declared before them, or in the object that owns the
/// handles. Debug builds count the live handles and trap when the allocator is
/// deinitialized with handles left.
///
/// The memory of the block is reached only inside a closure (``withMutableBytes(_:)``,
/// ``withBytes(_:)``, ``withUnsafeMutableBytes(_:)``); an allocator whose ``Backing`` is
/// `.none` has no memory, and these trap.
@frozen
public struct PageBlock: ~Copyable, Sendable {
  /// The block's first page.
  public let pfn: PFN
  /// The block's order: it spans `2^order` pages.
  public let order: Int
  /// Whether the block is a compound page (allocated with `.comp` at an order above 0).
  /// A compound page cannot be split.
  public let isCompound: Bool
  @usableFromInline unowned(unsafe) let allocator: PageAllocator

  /// The allocator, for calls that take no retain and release around them: reading an
  /// `unowned(unsafe)` field as a strong reference costs a retain/release pair per call
  /// (measured in the order-0 pair loop); `_withUnsafeGuaranteedRef` states what the
  /// field already promises, that the allocator is alive.
  @inlinable @inline(__always)
  var unmanagedAllocator: Unmanaged<PageAllocator> { .passUnretained(allocator) }

  /// A handle over a block the caller has just allocated with one reference.
  @inlinable @inline(__always)
  init(_owning pfn: PFN, order: Int, compound: Bool, allocator: PageAllocator) {
    self.pfn = pfn
    self.order = order
    self.isCompound = compound
    self.allocator = allocator
    allocator.handleCreated()
  }

  /// Takes ownership of a block allocated with the PFN API: `pfn` must be the head of a
  /// block of `order` allocated from `allocator` (``PageAllocator/allocPages(order:gfp:)``,
  /// or what ``relinquish()`` returned), with the reference the caller owns, and nothing
  /// else may free it afterwards. The handle frees it as any other.
  ///
  /// What can be checked cheaply is checked, and traps: the order's range, and that `pfn`
  /// heads an allocated block of that order with a reference. That no other owner will
  /// free the block cannot be checked: hence "unsafe". The allocator must outlive the
  /// handle.
  public init(unsafeAdopting pfn: PFN, order: Int, in allocator: PageAllocator) {
    if !(0...PageGeometry.maxOrder).contains(order) {
      pageHandleMisuse("PageBlock(unsafeAdopting:): order \(order) is outside 0...\(PageGeometry.maxOrder)")
    }
    if let problem = allocator.adoptionProblem(pfn, order: order) {
      pageHandleMisuse("PageBlock(unsafeAdopting: \(pfn), order: \(order)): \(problem)")
    }
    self.init(_owning: pfn, order: order, compound: allocator.isCompoundHead(pfn), allocator: allocator)
  }

  /// The block's pages: `2^order`.
  @inlinable public var pageCount: Int { 1 &<< order }

  /// The block's pfns.
  @inlinable public var pfns: Range<PFN> { pfn..<(pfn + pageCount) }

  /// Frees the block (`__free_pages()`, ``PageAllocator/freePages(_:order:)``): a compound
  /// block is freed whole. If someone took an extra reference on the head
  /// (``PageAllocator/getPage(_:)``), the block goes back as ``PageAllocator/freePages(_:order:)``
  /// says: its last holder frees the head later.
  @inlinable
  public consuming func free() {
    unmanagedAllocator._withUnsafeGuaranteedRef {
      $0.freePages(pfn, order: order)
      $0.handleEnded()
    }
    discard self
  }

  /// Splits the block into `2^order` order-0 pages with one reference each
  /// (`split_page()`), owned by the returned run. Order 0 gives a run of one page.
  ///
  /// A compound block (``isCompound``: allocated with `.comp`) cannot be split, as the
  /// kernel's `split_page()` refuses compound pages: this traps. Free it whole with
  /// ``free()``.
  @inlinable
  public consuming func split() -> PageRun {
    if _slowPath(isCompound) {
      pageHandleMisuse(
        "PageBlock.split(): the block is a compound page (allocated with .comp) and split_page() refuses compound pages; free it whole with free()"
      )
    }
    unmanagedAllocator._withUnsafeGuaranteedRef {
      $0.splitPage(pfn, order: order)
      $0.handleEnded()
    }
    let run = PageRun(_owning: pfn, count: pageCount, unmanaged: unmanagedAllocator)
    discard self
    return run
  }

  /// Gives the block to the PFN API: returns its head, and the caller now owns the
  /// reference (free it with ``PageAllocator/freePages(_:order:)``, split it with
  /// ``PageAllocator/splitPage(_:order:)``...). Nothing is freed.
  @inlinable
  public consuming func relinquish() -> PFN {
    let p = pfn
    unmanagedAllocator._withUnsafeGuaranteedRef { $0.handleEnded() }
    discard self
    return p
  }

  /// Calls `body` with the block's memory, `2^order * 4096` bytes, readable and writable.
  /// The pointer is valid only inside `body`, while the handle owns the block.
  ///
  /// - Precondition: the allocator has memory (its ``Backing`` is not `.none`).
  @inlinable
  public func withUnsafeMutableBytes<R: ~Copyable, E: Error>(
    _ body: (UnsafeMutableRawBufferPointer) throws(E) -> R
  ) throws(E) -> R {
    let base = unmanagedAllocator._withUnsafeGuaranteedRef { $0.handleBytes(pfn, "PageBlock") }
    return try body(UnsafeMutableRawBufferPointer(start: base, count: pageCount &* PageGeometry.pageSize))
  }

  /// Calls `body` with the block's memory as a mutable span, `2^order * 4096` bytes.
  ///
  /// `mutating`: the span promises exclusive access to the bytes, which the handle's
  /// exclusivity provides (no second span over the same pages can exist meanwhile).
  ///
  /// - Precondition: the allocator has memory (its ``Backing`` is not `.none`).
  @inlinable
  public mutating func withMutableBytes<R: ~Copyable, E: Error>(
    _ body: (inout MutableRawSpan) throws(E) -> R
  ) throws(E) -> R {
    let base = unmanagedAllocator._withUnsafeGuaranteedRef { $0.handleBytes(pfn, "PageBlock") }
    var span = unsafe MutableRawSpan(
      _unsafeBytes: UnsafeMutableRawBufferPointer(start: base, count: pageCount &* PageGeometry.pageSize))
    return try body(&span)
  }

  /// Calls `body` with the block's memory as a read-only span, `2^order * 4096` bytes.
  ///
  /// - Precondition: the allocator has memory (its ``Backing`` is not `.none`).
  @inlinable
  public func withBytes<R: ~Copyable, E: Error>(_ body: (RawSpan) throws(E) -> R) throws(E) -> R {
    let base = unmanagedAllocator._withUnsafeGuaranteedRef { $0.handleBytes(pfn, "PageBlock") }
    let span = unsafe RawSpan(
      _unsafeBytes: UnsafeRawBufferPointer(start: base, count: pageCount &* PageGeometry.pageSize))
    return try body(span)
  }

  /// Frees the block if the handle still owns it (see ``free()``).
  deinit {
    unmanagedAllocator._withUnsafeGuaranteedRef {
      $0.freePages(pfn, order: order)
      $0.handleEnded()
    }
  }
}

/// Traps with `message`: a handle used against its rules.
@usableFromInline @inline(never)
func pageHandleMisuse(_ message: String) -> Never {
  fatalError(message)
}

extension PageAllocator {
  /// Counts a handle created, in debug builds (see ``checkNoLiveHandles()``).
  @inlinable @inline(__always)
  func handleCreated() {
    #if DEBUG
      liveHandles.wrappingAdd(1, ordering: .relaxed)
    #endif
  }

  /// Counts a handle ended (freed, split, relinquished or dropped), in debug builds.
  @inlinable @inline(__always)
  func handleEnded() {
    #if DEBUG
      liveHandles.wrappingSubtract(1, ordering: .relaxed)
    #endif
  }

  /// Debug builds: traps when the allocator goes away while handles still reference it
  /// (they would free into freed memory). Called from the allocator's deinit.
  func checkNoLiveHandles() {
    #if DEBUG
      let n = liveHandles.load(ordering: .acquiring)
      if n != 0 {
        pageHandleMisuse(
          "PageAllocator deinitialized while \(n) PageBlock/PageRun handle(s) still own its pages: the allocator must outlive its handles"
        )
      }
    #endif
  }

  /// The address of `pfn`'s page for a handle's byte access; traps without memory.
  @inlinable @inline(__always)
  func handleBytes(_ pfn: PFN, _ what: StaticString) -> UnsafeMutableRawPointer {
    guard let base = arena.address(of: pfn.value) else { handleHasNoBytes(what) }
    return base
  }

  @usableFromInline @inline(never)
  func handleHasNoBytes(_ what: StaticString) -> Never {
    pageHandleMisuse("\(what) has no bytes: the allocator's backing is .none")
  }

  /// Whether `pfn` is the head of a compound page.
  func isCompoundHead(_ pfn: PFN) -> Bool {
    guard let r = memMap.record(pfn.value) else { return false }
    return r.pointee.flags.load(ordering: .relaxed) & PG.head != 0
  }

  /// Why `pfn` cannot be the head of an allocated block of `order` with a reference, or
  /// nil when it can.
  func adoptionProblem(_ pfn: PFN, order: Int) -> String? {
    guard let r = memMap.record(pfn.value), zoneIndex(pfn.value) != nil else { return "pfn outside every zone" }
    let w = r.pointee.flags.load(ordering: .relaxed)
    if w & PG.freeMask != 0 || freeBlockContaining(pfn.value) != nil { return "the page is free" }
    if w & PG.tail != 0 { return "the page is a compound tail" }
    if w & PG.quarantined != 0 { return "the page is quarantined" }
    if PG.order(w) != order { return "the block was allocated at order \(PG.order(w))" }
    if r.pointee.refcount.load(ordering: .relaxed) <= 0 { return "the page has no reference (frozen)" }
    return nil
  }
}

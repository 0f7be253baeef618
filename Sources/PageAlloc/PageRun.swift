/// Contiguous order-0 pages with one reference each, owned by this value: what
/// ``PageBlock/split()`` and ``PageAllocator/allocateContiguous(pages:gfp:)`` hand out, as a
/// move-only handle.
///
/// The pages go back to the allocator exactly once: by ``free()``, the chunked free of the
/// series (`free_contig_range()`, ``PageAllocator/freeContigRange(_:count:)``: the largest
/// aligned power-of-two chunks, not one free per page), by ``relinquish()`` (the caller
/// takes over the pfns), or, when none of these ran, when the handle is dropped: its
/// `deinit` frees what the run still owns. ``extract(first:)`` moves pages from the front
/// into a run of their own, so parts of a run can be freed or kept apart.
///
/// ```swift
/// var run = try allocator.allocate(order: 9).split()    // 512 pages
/// let head = run.extract(first: 8)                        // 8 pages; run keeps 504
/// head.free()                                             // one order-3 chunk
/// // run is freed when it goes out of scope
/// ```
///
/// **The allocator must outlive its handles**: see ``PageBlock``. Byte access is as for
/// ``PageBlock``: the memory of the run's pages, `count * 4096` bytes, inside a closure;
/// an allocator with backing `.none` has none, and the accessors trap.
@frozen
public struct PageRun: ~Copyable, Sendable {
  @usableFromInline var _start: PFN
  @usableFromInline var _count: Int
  @usableFromInline unowned(unsafe) let allocator: PageAllocator

  /// A handle over `count` order-0 pages from `start` that the caller owns, one reference
  /// each.
  @inlinable @inline(__always)
  init(_owning start: PFN, count: Int, allocator: PageAllocator) {
    _start = start
    _count = count
    self.allocator = allocator
    allocator.handleCreated()
  }

  /// The same handle from the allocator's unmanaged reference (PageBlock.split()).
  @inlinable @inline(__always)
  init(_owning start: PFN, count: Int, unmanaged: Unmanaged<PageAllocator>) {
    _start = start
    _count = count
    allocator = unmanaged._withUnsafeGuaranteedRef { $0 }
    unmanaged._withUnsafeGuaranteedRef { $0.handleCreated() }
  }

  /// See ``PageBlock``'s `unmanagedAllocator`.
  @inlinable @inline(__always)
  var unmanagedAllocator: Unmanaged<PageAllocator> { .passUnretained(allocator) }

  /// Takes ownership of order-0 pages allocated with the PFN API (split pages, or what
  /// ``relinquish()`` returned), one reference each, which nothing else may free
  /// afterwards. The handle frees them as any other run.
  ///
  /// The first page is checked (in a zone, allocated, not a compound page), and a failed
  /// check traps; the rest is the caller's promise: hence "unsafe". The allocator must
  /// outlive the handle.
  public init(unsafeAdopting pfns: Range<PFN>, in allocator: PageAllocator) {
    if !pfns.isEmpty, let problem = allocator.adoptionProblem(pfns.lowerBound, order: 0) {
      pageHandleMisuse("PageRun(unsafeAdopting: \(pfns.lowerBound)..<\(pfns.upperBound)): \(problem)")
    }
    if !pfns.isEmpty && allocator.isCompoundHead(pfns.lowerBound) {
      pageHandleMisuse("PageRun(unsafeAdopting:): \(pfns.lowerBound) is a compound head; a run holds order-0 pages")
    }
    self.init(_owning: pfns.lowerBound, count: pfns.count, allocator: allocator)
  }

  /// The run's first page (one past its last for an empty run).
  @inlinable public var start: PFN { _start }

  /// The run's pages.
  @inlinable public var count: Int { _count }

  /// The run's pfns.
  @inlinable public var pfns: Range<PFN> { start..<(start + count) }

  /// Whether the run holds no page (after ``extract(first:)`` took them all).
  @inlinable public var isEmpty: Bool { count == 0 }

  /// Frees the run's pages with the chunked free (`free_contig_range()`,
  /// ``PageAllocator/freeContigRange(_:count:)``): one reference dropped per page, and
  /// the pages that reach zero freed as the largest aligned power-of-two chunks. A page
  /// someone took an extra reference on stays allocated until its last
  /// ``PageAllocator/putPage(_:)``. An empty run frees nothing.
  @inlinable
  public consuming func free() {
    unmanagedAllocator._withUnsafeGuaranteedRef {
      $0.freeContigRange(_start, count: _count)
      $0.handleEnded()
    }
    discard self
  }

  /// Moves the first `n` pages into a new run and returns it; this run keeps the rest.
  ///
  /// `n` may be the whole run (this run is then empty, and freeing or dropping it does
  /// nothing), but not 0: an empty extraction is a bug in the caller's arithmetic.
  ///
  /// - Precondition: `0 < n <= count`.
  @inlinable
  public mutating func extract(first n: Int) -> PageRun {
    if _slowPath(n <= 0 || n > count) {
      pageHandleMisuse("PageRun.extract(first: \(n)) of a run of \(count) pages: n must be in 1...\(count)")
    }
    let head = PageRun(_owning: _start, count: n, unmanaged: unmanagedAllocator)
    _start += n
    _count &-= n
    return head
  }

  /// Gives the pages to the PFN API: returns their pfns, and the caller now owns one
  /// reference on each (free them with ``PageAllocator/freeContigRange(_:count:)``,
  /// ``PageAllocator/putPage(_:)``...). Nothing is freed.
  @inlinable
  public consuming func relinquish() -> Range<PFN> {
    let r = _start..<(_start + _count)
    unmanagedAllocator._withUnsafeGuaranteedRef { $0.handleEnded() }
    discard self
    return r
  }

  /// Calls `body` with the run's memory, `count * 4096` bytes (contiguous: the arena maps
  /// the pfns in order), readable and writable. The pointer is valid only inside `body`.
  ///
  /// - Precondition: the allocator has memory (its ``Backing`` is not `.none`).
  @inlinable
  public func withUnsafeMutableBytes<R: ~Copyable, E: Error>(
    _ body: (UnsafeMutableRawBufferPointer) throws(E) -> R
  ) throws(E) -> R {
    let base = unmanagedAllocator._withUnsafeGuaranteedRef { $0.handleBytes(_start, "PageRun") }
    return try body(UnsafeMutableRawBufferPointer(start: base, count: count &* PageGeometry.pageSize))
  }

  /// Calls `body` with the run's memory as a mutable span, `count * 4096` bytes.
  /// `mutating` for the same reason as ``PageBlock/withMutableBytes(_:)``.
  ///
  /// - Precondition: the allocator has memory (its ``Backing`` is not `.none`).
  @inlinable
  public mutating func withMutableBytes<R: ~Copyable, E: Error>(
    _ body: (inout MutableRawSpan) throws(E) -> R
  ) throws(E) -> R {
    let base = unmanagedAllocator._withUnsafeGuaranteedRef { $0.handleBytes(_start, "PageRun") }
    var span = unsafe MutableRawSpan(
      _unsafeBytes: UnsafeMutableRawBufferPointer(start: base, count: count &* PageGeometry.pageSize))
    return try body(&span)
  }

  /// Calls `body` with the run's memory as a read-only span, `count * 4096` bytes.
  ///
  /// - Precondition: the allocator has memory (its ``Backing`` is not `.none`).
  @inlinable
  public func withBytes<R: ~Copyable, E: Error>(_ body: (RawSpan) throws(E) -> R) throws(E) -> R {
    let base = unmanagedAllocator._withUnsafeGuaranteedRef { $0.handleBytes(_start, "PageRun") }
    let span = unsafe RawSpan(
      _unsafeBytes: UnsafeRawBufferPointer(start: base, count: count &* PageGeometry.pageSize))
    return try body(span)
  }

  /// Frees what the run still owns (see ``free()``).
  deinit {
    unmanagedAllocator._withUnsafeGuaranteedRef {
      $0.freeContigRange(_start, count: _count)
      $0.handleEnded()
    }
  }
}

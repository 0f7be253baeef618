import CPageAllocShim
import Glibc

/// The memory behind the pfns: a memfd (default), anonymous memory, or none.
///
/// The whole pfn span is reserved with `MAP_NORESERVE`, so 16 GiB of pfns cost nothing until
/// a page is touched. `address(of:)` is `base + (pfn - basePFN) * PAGE_SIZE`.
@usableFromInline
struct Arena {
  @usableFromInline let base: UnsafeMutableRawPointer?
  @usableFromInline let basePFN: Int
  let bytes: Int
  /// The memfd, or -1.
  @usableFromInline let fd: Int32

  init(backing: Backing, basePFN: Int, endPFN: Int) throws(ConfigurationError) {
    self.basePFN = basePFN
    let bytes = (endPFN - basePFN) * PageGeometry.pageSize
    self.bytes = bytes
    switch backing {
    case .none:
      base = nil
      fd = -1
    case .anonymous:
      let p = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
      guard let p, p != MAP_FAILED else {
        throw ConfigurationError.mapFailed("mmap of \(bytes) anonymous bytes", errno: errno)
      }
      base = p
      fd = -1
    case .memfd:
      let fd = "pagealloc".withCString { cpa_memfd_create($0) }
      guard fd >= 0 else { throw ConfigurationError.mapFailed("memfd_create", errno: errno) }
      guard ftruncate(fd, off_t(bytes)) == 0 else {
        let e = errno
        close(fd)
        throw ConfigurationError.mapFailed("ftruncate of the memfd to \(bytes) bytes", errno: e)
      }
      let p = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0)
      guard let p, p != MAP_FAILED else {
        let e = errno
        close(fd)
        throw ConfigurationError.mapFailed("mmap of the \(bytes)-byte memfd", errno: e)
      }
      base = p
      self.fd = fd
    }
  }

  func deallocate() {
    if let base { munmap(base, bytes) }
    if fd >= 0 { close(fd) }
  }

  @inlinable @inline(__always)
  func address(of pfn: Int) -> UnsafeMutableRawPointer? {
    guard let base else { return nil }
    return base + (pfn &- basePFN) &* PageGeometry.pageSize
  }

  /// Byte offset of a pfn in the memfd.
  @inlinable func fileOffset(of pfn: Int) -> Int { (pfn &- basePFN) &* PageGeometry.pageSize }

  /// Gives the memory of `count` pages back to the OS (`MADV_REMOVE` or a punched hole):
  /// the pages read back as zeroes.
  func discard(_ pfn: Int, count: Int) {
    guard let a = address(of: pfn) else { return }
    let len = count * PageGeometry.pageSize
    if fd >= 0 {
      _ = cpa_punch_hole(fd, off_t(fileOffset(of: pfn)), off_t(len))
    } else {
      _ = madvise(a, len, MADV_DONTNEED)
    }
  }
}

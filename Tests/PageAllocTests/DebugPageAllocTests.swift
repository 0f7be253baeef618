import Glibc
import PageAlloc
import PageAllocTestSupport
import PageAllocVMalloc
import Testing

/// The permissions (`rw-s`, `---s`...) of the mapping holding `address`, from
/// /proc/self/maps.
func mappingPermissions(_ address: UnsafeRawPointer) -> String? {
  guard let f = fopen("/proc/self/maps", "r") else { return nil }
  defer { fclose(f) }
  let a = UInt(bitPattern: address)
  var buf = [CChar](repeating: 0, count: 4096)
  while fgets(&buf, Int32(buf.count), f) != nil {
    let line = buf.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    let fields = line.split(separator: " ")
    let range = fields[0].split(separator: "-")
    guard range.count == 2, let s = UInt(range[0], radix: 16), let e = UInt(range[1], radix: 16) else { continue }
    if a >= s && a < e { return String(fields[1]) }
  }
  return nil
}

func debugAllocator(
  pages: Int = 1 << 12, backing: Backing = .memfd, pageOwner: Bool = true, debugPageAlloc: Bool = true,
  poison: Bool = false, initOnAlloc: Bool = false, initOnFree: Bool = false
) throws -> PageAllocator {
  try PageAllocator(
    configuration: .init(
      zones: [ZoneConfiguration(kind: .normal, pfns: PFN(0)..<PFN(pages))], cpuCount: 1, backing: backing,
      poisonPages: poison, pageOwner: pageOwner, debugPageAlloc: debugPageAlloc, initOnAlloc: initOnAlloc,
      initOnFree: initOnFree))
}

/// Frees `pfn` (order 0): the frame the use-after-free report's free stack must name.
@inline(never)
func freeForUseAfterFreeTest(_ a: PageAllocator, _ pfn: PFN) {
  a.freePages(pfn, order: 0)
}

@Suite struct DebugPageAllocTests {
  @Test func needsBackedMemory() {
    #expect(throws: ConfigurationError.debugPageAllocNeedsMemory) {
      _ = try debugAllocator(backing: .none)
    }
  }

  @Test func freePagesAreProtectedAndAllocatedPagesAccessible() throws {
    for backing in [Backing.memfd, .anonymous] {
      let a = try debugAllocator(backing: backing)
      #expect(a.isProtectingFreePages)
      let p = try #require(a.allocPages(order: 0, gfp: .kernel))
      let addr = try #require(a.address(of: p))
      #expect(mappingPermissions(addr)?.hasPrefix("rw") == true)
      addr.storeBytes(of: 7, as: UInt64.self)
      a.freePages(p, order: 0)  // onto the pcp list: protected there too
      #expect(a.pcpPageCount == 1)
      #expect(mappingPermissions(addr)?.hasPrefix("---") == true)
      let q = try #require(a.allocPages(order: 0, gfp: .kernel))
      #expect(q == p)
      #expect(mappingPermissions(addr)?.hasPrefix("rw") == true)
      #expect(addr.load(as: UInt64.self) == 7)  // not poisoned, not zeroed
      a.freePages(q, order: 0)
      // A never-allocated page is free: protected since start.
      let far = try #require(a.address(of: PFN(3000)))
      #expect(mappingPermissions(far)?.hasPrefix("---") == true)
      try a.verify()
    }
  }

  @Test func theChunkedFreeProtectsOncePerRun() throws {
    let a = try debugAllocator(pages: 1 << 13)
    let head = try #require(a.allocPages(order: 9, gfp: .kernel))
    a.splitPage(head, order: 9)
    let before = a.protectionChanges.load(ordering: .relaxed)
    a.freeContigRange(head, count: 512)
    // One run of 512 pages: one mprotect, not 512.
    #expect(a.protectionChanges.load(ordering: .relaxed) - before == 1)
    #expect(mappingPermissions(try #require(a.address(of: head + 300)))?.hasPrefix("---") == true)
    // A hole in the run (a page still referenced) makes two runs: two changes.
    let h2 = try #require(a.allocPages(order: 4, gfp: .kernel))
    a.splitPage(h2, order: 4)
    a.getPage(h2 + 5)
    let b2 = a.protectionChanges.load(ordering: .relaxed)
    a.freeContigRange(h2, count: 16)
    #expect(a.protectionChanges.load(ordering: .relaxed) - b2 == 2)
    #expect(mappingPermissions(try #require(a.address(of: h2 + 5)))?.hasPrefix("rw") == true)
    a.putPage(h2 + 5)
    #expect(mappingPermissions(try #require(a.address(of: h2 + 5)))?.hasPrefix("---") == true)
    try a.verify()
  }

  @Test func contiguousRangesAndBulkAreMappedWhenAllocated() throws {
    let a = try debugAllocator(pages: 1 << 13)
    try a.allocContigRange(PFN(1000)..<PFN(1100), gfp: .kernel)
    for p in [1000, 1050, 1099] {
      #expect(mappingPermissions(try #require(a.address(of: PFN(p))))?.hasPrefix("rw") == true)
    }
    #expect(mappingPermissions(try #require(a.address(of: PFN(999))))?.hasPrefix("---") == true)
    #expect(mappingPermissions(try #require(a.address(of: PFN(1100))))?.hasPrefix("---") == true)
    a.freeContigRange(PFN(1000), count: 100)
    #expect(mappingPermissions(try #require(a.address(of: PFN(1050))))?.hasPrefix("---") == true)
    let bulk = a.allocPagesBulk(count: 8, gfp: .kernel)
    for p in bulk { #expect(mappingPermissions(try #require(a.address(of: p)))?.hasPrefix("rw") == true) }
    a.freePagesBulk(bulk)
    for p in bulk { #expect(mappingPermissions(try #require(a.address(of: p)))?.hasPrefix("---") == true) }
    try a.verify()
  }

  /// A child process writes to a page it freed: it must die of SIGSEGV, and the report
  /// on its standard error must name that pfn and the function that freed it.
  @Test func aWriteAfterFreeKillsTheProcessWithAReport() async throws {
    let result = await #expect(processExitsWith: .signal(SIGSEGV), observing: [\.standardErrorContent]) {
      let a = try debugAllocator()
      _ = a.allocPages(order: 2, gfp: .kernel)  // not the first page
      let p = a.allocPages(order: 0, gfp: .kernel)!
      let addr = a.address(of: p)!
      addr.storeBytes(of: 1, as: UInt8.self)
      freeForUseAfterFreeTest(a, p)
      let note = "test: writing to pfn 0x\(String(p.value, radix: 16))\n"
      _ = note.withCString { write(2, $0, strlen($0)) }
      (addr + 100).storeBytes(of: 2, as: UInt8.self)  // use after free
      _ = note.withCString { write(2, $0, strlen($0)) }  // never reached
    }
    let stderr = String(decoding: try #require(result).standardErrorContent, as: UTF8.self)
    let written = try #require(stderr.split(separator: "\n").first { $0.hasPrefix("test: writing to pfn ") })
    let pfnText = written.dropFirst("test: writing to pfn ".count)
    #expect(stderr.contains("use after free: pfn \(pfnText) offset 0x64"))
    #expect(stderr.contains("BUG: unable to handle page fault for address:"))
    #expect(stderr.contains("page_owner tracks the page as freed"))
    let freeStack = try #require(stderr.components(separatedBy: "stack trace:\n").last)
    #expect(freeStack.contains("freeForUseAfterFreeTest"))
    #expect(stderr.components(separatedBy: "test: writing").count == 2)
  }

  /// vfree unmaps the area before its pages go back; the pages are then protected at
  /// their arena address too. A write through the stale vmalloc address faults, and the
  /// report names the page that was mapped there.
  @Test func aWriteAfterVfreeFaultsAtTheVmallocAddress() async throws {
    let a = try debugAllocator(pages: 1 << 13)
    let v = try VMalloc(allocator: a)
    let p = try #require(v.vmalloc(3 * 4096))
    let pages = try #require(v.pages(of: p))
    p.storeBytes(of: 1, as: UInt64.self)
    v.vfree(p)
    for q in pages {
      #expect(mappingPermissions(try #require(a.address(of: q)))?.hasPrefix("---") == true)
    }
    #expect(mappingPermissions(p)?.hasPrefix("---") == true)
    let result = await #expect(processExitsWith: .signal(SIGSEGV), observing: [\.standardErrorContent]) {
      let a = try debugAllocator(pages: 1 << 13)
      let v = try VMalloc(allocator: a)
      let p = v.vmalloc(2 * 4096)!
      let second = v.pages(of: p)![1]
      v.vfree(p)
      let note = "test: vfreed page 0x\(String(second.value, radix: 16))\n"
      _ = note.withCString { write(2, $0, strlen($0)) }
      (p + 4096 + 8).storeBytes(of: 2, as: UInt8.self)  // use after vfree
    }
    let stderr = String(decoding: try #require(result).standardErrorContent, as: UTF8.self)
    let line = try #require(stderr.split(separator: "\n").first { $0.hasPrefix("test: vfreed page ") })
    let pfnText = line.dropFirst("test: vfreed page ".count)
    #expect(stderr.contains("pagealloc: use after vfree: vmalloc address 0x"))
    #expect(stderr.contains(" last mapped pfn \(pfnText)\n"))
    #expect(stderr.contains("page_owner tracks the page as freed"))
  }
}

import Foundation
import Testing

import PageAlloc

/// The article "Using PageAlloc as a page pool" (PageAlloc.docc/UsingPageAllocAsAPagePool.md):
/// its example runs here verbatim, and a second test checks that the article's code block
/// and the marked region below are the same text.
@Suite struct PagePoolArticleTests {
  @Test func articleExampleRuns() throws {
    // BEGIN ARTICLE EXAMPLE
    // One Normal zone of 65536 pages (256 MiB), memory from a memfd.
    let pool = try PageAllocator(configuration: .normal(pages: 65536))

    // One page. Its bytes are reached inside a closure only, as a span.
    var page = try pool.allocate()
    page.withMutableBytes { bytes in
      bytes.storeBytes(of: 0xC0FFEE, toByteOffset: 0, as: UInt64.self)
    }
    let word = page.withBytes { $0.unsafeLoad(fromByteOffset: 0, as: UInt64.self) }
    precondition(word == 0xC0FFEE)
    page.free()

    // A 2 MiB block (order 9), split into 512 order-0 pages that one run owns.
    var run = try pool.allocate(order: 9).split()
    // The first 16 pages become a buffer of their own; the other 496 go back at once, as
    // the largest aligned chunks (16, 32, 64, 128, 256 pages), not page by page.
    var buffer = run.extract(first: 16)
    run.free()
    buffer.withMutableBytes { bytes in
      bytes.storeBytes(of: 1, toByteOffset: 15 * 4096, as: UInt8.self)  // the last page
    }

    // Contiguous pages of any count, one reference each.
    let ring = try pool.allocateContiguous(pages: 100)

    // A handle dropped without being freed frees what it owns.
    do {
      let scratch = try pool.allocate(order: 3)
      precondition(scratch.pageCount == 8)
    }  // scratch's 8 pages are free again here

    // Relinquish: the PFN API (the kernel-model layer) takes over the pages.
    let head = try pool.allocate(order: 2).relinquish()
    pool.getPage(head)  // a second reference, as the kernel's get_page()
    pool.freePages(head, order: 2)  // the tail pages go; the head stays referenced
    pool.putPage(head)  // the last reference: the head goes too
    // And back: a handle adopts a block allocated with the PFN API.
    let adopted = PageBlock(unsafeAdopting: pool.allocPages(order: 1, gfp: .kernel)!, order: 1, in: pool)

    // Errors are typed: allocate throws AllocationFailure, with the order, the flags and why.
    do {
      let tooBig = try pool.allocate(order: 11)
      tooBig.free()
    } catch {
      precondition(error.order == 11 && error.reason == .invalidOrder)
    }
    // No reclaim: when memory runs out, allocate throws (compaction has nothing to move).
    var huge: [PFN] = []
    do {
      while true { huge.append(try pool.allocate(order: 10).relinquish()) }
    } catch {
      print(error)  // page allocation failure: order:10, mode:0xcc0(GFP_KERNEL): ...
    }
    for pfn in huge { pool.freePages(pfn, order: 10) }
    // allocateContiguous throws ContigRangeError.
    do {
      _ = try pool.allocateContiguous(pages: 1 << 20)
    } catch {
      precondition(error == .noFreeRange(pages: 1 << 20, gfp: .kernel))
    }

    // Give the rest back and check the allocator: every page free, every list consistent.
    ring.free()
    buffer.free()
    adopted.free()
    precondition(pool.freePageCount == pool.managedPageCount)
    try pool.verify()
    // END ARTICLE EXAMPLE
    #expect(pool.badPageCount == 0)
    // The three failures the example provokes: order 11, the pool exhausted, 2^20 pages.
    #expect(pool.allocationFailureCount == 3)
    #expect(huge.count > 40)
  }

  @Test func articleCodeIsThisFilesCode() throws {
    let thisFile = URL(fileURLWithPath: #filePath)
    let root = thisFile.deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    let articleURL = root.appendingPathComponent("Sources/PageAlloc/PageAlloc.docc/UsingPageAllocAsAPagePool.md")
    let article = try String(contentsOf: articleURL, encoding: .utf8)
    let blocks = Self.swiftCodeBlocks(article)
    #expect(blocks.count == 1, "the article keeps its example as one Swift code block")
    let block = try #require(blocks.first)

    let lines = try String(contentsOf: thisFile, encoding: .utf8).split(
      separator: "\n", omittingEmptySubsequences: false)
    let begin = try #require(lines.firstIndex { $0.trimmingCharacters(in: .whitespaces) == "// BEGIN ARTICLE EXAMPLE" })
    let end = try #require(lines.firstIndex { $0.trimmingCharacters(in: .whitespaces) == "// END ARTICLE EXAMPLE" })
    let indent = lines[begin].prefix { $0 == " " }
    let region = lines[(begin + 1)..<end].map { line in
      line.hasPrefix(indent) ? String(line.dropFirst(indent.count)) : String(line)
    }
    let firstDifference =
      zip(region, block).enumerated().first { $0.element.0 != $0.element.1 }?.offset
      ?? min(region.count, block.count)
    #expect(
      region == block,
      "article and test differ from line \(firstDifference + 1) of the example on: copy the article's block here")
  }

  /// The lines of each ```swift block of a Markdown text.
  static func swiftCodeBlocks(_ text: String) -> [[String]] {
    var blocks: [[String]] = []
    var current: [String]?
    for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
      if current == nil {
        if line == "```swift" { current = [] }
      } else if line == "```" {
        blocks.append(current!)
        current = nil
      } else {
        current!.append(String(line))
      }
    }
    return blocks
  }
}

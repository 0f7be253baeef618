import PageAlloc
import Testing
import PageAllocTestSupport
@testable import PageAllocBench

@Suite struct VMallocBenchTests {
  @Test("the vmalloc suite runs every test_vmalloc case with every variant")
  func quickRun() throws {
    let results = try VMallocBench.run(quick: true)
    #expect(results.count == 10 * VMallocBench.Variant.allCases.count)
    #expect(results.allSatisfy { $0.suite == "vmalloc" && $0.iterations > 0 && $0.totalNanoseconds > 0 })
    let ratios = VMallocBench.ratios(results)
    #expect(ratios.map(\.test).contains("fix_size_alloc_test p:512"))
    #expect(ratios.count == 10)
    #expect(ratios.allSatisfy { $0.perPageOverBulk > 0 && $0.mmapOverBulk > 0 && $0.pagesPerPageOverBulk > 0 })
    let table = VMallocBench.format(results)
    #expect(table.split(separator: "\n").count == 11)
  }
}

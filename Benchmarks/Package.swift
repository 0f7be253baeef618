// swift-tools-version: 6.1
// The PageAlloc benchmarks with ordo-one/benchmark: percentiles of the `pagealloc bench`
// cases, and malloc counts (zero in steady state, checked by `thresholds check`).
// A separate package, as swift-nio does, so the library's graph stays free of the
// benchmark plugin and the malloc interposer.
import PackageDescription

let package = Package(
  name: "PageAllocBenchmarks",
  dependencies: [
    .package(name: "PageAlloc", path: "../"),
    .package(url: "https://github.com/ordo-one/benchmark", exact: "1.38.1", traits: ["MallocInterposer"]),
  ],
  targets: [
    .executableTarget(
      name: "PageAllocBenchmarks",
      dependencies: [
        .product(name: "PageAlloc", package: "PageAlloc"),
        // allocVmallocPages (vm_area_alloc_pages) for the vmalloc-like arrays.
        .product(name: "PageAllocVMalloc", package: "PageAlloc"),
        .product(name: "Benchmark", package: "benchmark"),
      ],
      path: "Benchmarks/PageAllocBenchmarks",
      plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")])
  ]
)

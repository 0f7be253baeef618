// swift-tools-version: 6.1
// PageAlloc: the Linux zoned buddy page allocator as a Swift library, with the tools around
// it. The targets form layers that only call downward (the compiler enforces it):
//
//   pagealloc (CLI: argument parsing and printing)
//     PageAllocBench      suites, report, JSON, SVG
//     PageAllocStress     stress engine, bad-free injection, the random API-sequence driver
//     PageAllocTrace      kmem trace parser, replay, anomalies (the only zlib user)
//     PageAllocViews      /proc text views, fragmentation map, info workloads
//     PageAllocVMalloc    vmalloc, vmap, vfree, vmallocinfo
//   PageAlloc             the allocator (`import PageAlloc` gets this and nothing else)
//   _PageAllocUtilities   package-internal helpers shared by the layers above the core
//   CPageAllocShim        memfd_create, fallocate, the rseq CPU id (no zlib)
import PackageDescription

let package = Package(
  name: "PageAlloc",
  products: [
    .library(name: "PageAlloc", targets: ["PageAlloc"]),
    .library(name: "PageAllocVMalloc", targets: ["PageAllocVMalloc"]),
    .library(name: "PageAllocTrace", targets: ["PageAllocTrace"]),
    .library(name: "PageAllocViews", targets: ["PageAllocViews"]),
    .executable(name: "pagealloc", targets: ["pagealloc"]),
  ],
  dependencies: [
    .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
    .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"),
  ],
  targets: [
    // memfd_create, fallocate, mremap and sched_getcpu are declared only with _GNU_SOURCE.
    .target(name: "CPageAllocShim", cSettings: [.define("_GNU_SOURCE")]),
    .target(
      name: "CPageAllocGzip", cSettings: [.define("_GNU_SOURCE")], linkerSettings: [.linkedLibrary("z")]),
    .target(name: "_PageAllocUtilities"),
    .target(name: "PageAlloc", dependencies: ["CPageAllocShim", "_PageAllocUtilities"]),
    .target(name: "PageAllocVMalloc", dependencies: ["PageAlloc", "CPageAllocShim", "_PageAllocUtilities"]),
    .target(name: "PageAllocTrace", dependencies: ["PageAlloc", "CPageAllocGzip", "_PageAllocUtilities"]),
    .target(name: "PageAllocViews", dependencies: ["PageAlloc", "_PageAllocUtilities"]),
    .target(
      name: "PageAllocStress", dependencies: ["PageAlloc", "PageAllocVMalloc", "_PageAllocUtilities"]),
    .target(
      name: "PageAllocBench",
      dependencies: ["PageAlloc", "PageAllocVMalloc", "PageAllocTrace", "_PageAllocUtilities"]),
    .executableTarget(
      name: "pagealloc",
      dependencies: [
        "PageAlloc", "PageAllocVMalloc", "PageAllocTrace", "PageAllocViews", "PageAllocStress",
        "PageAllocBench", "_PageAllocUtilities",
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
      ]),

    // Tests: one target per module, sharing the set-up helpers of PageAllocTestSupport.
    .target(
      name: "PageAllocTestSupport",
      dependencies: ["PageAlloc", "PageAllocVMalloc", "PageAllocStress", "_PageAllocUtilities"],
      path: "Tests/PageAllocTestSupport"),
    .testTarget(
      name: "PageAllocTests",
      dependencies: [
        "PageAlloc", "PageAllocTestSupport", "PageAllocStress", "PageAllocVMalloc", "_PageAllocUtilities",
      ]),
    .testTarget(
      name: "PageAllocVMallocTests",
      dependencies: [
        "PageAlloc", "PageAllocVMalloc", "PageAllocTestSupport", "_PageAllocUtilities",
      ]),
    .testTarget(
      name: "PageAllocTraceTests",
      dependencies: ["PageAlloc", "PageAllocTrace", "PageAllocViews", "PageAllocTestSupport", "_PageAllocUtilities"]),
    .testTarget(name: "PageAllocViewsTests", dependencies: ["PageAlloc", "PageAllocViews", "PageAllocTestSupport"]),
    .testTarget(
      name: "PageAllocStressTests",
      dependencies: [
        "PageAlloc", "PageAllocVMalloc", "PageAllocStress", "PageAllocTestSupport", "_PageAllocUtilities",
      ]),
    .testTarget(name: "PageAllocUtilitiesTests", dependencies: ["_PageAllocUtilities"]),
    .testTarget(
      name: "PageAllocBenchTests", dependencies: ["PageAlloc", "PageAllocBench", "PageAllocTestSupport"]),
    // Runs the built `pagealloc` binary (built with the tests by `swift build --build-tests`
    // and `swift test`) and compares its output with the libraries'.
    .testTarget(name: "PageAllocCLITests", dependencies: ["PageAlloc", "PageAllocViews"]),
  ]
)

// swift-tools-version: 6.1
import PackageDescription

let package = Package(
  name: "PageAlloc",
  products: [
    .library(name: "PageAlloc", targets: ["PageAlloc"]),
    .executable(name: "pagealloc", targets: ["pagealloc"]),
  ],
  dependencies: [
    .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
    .package(url: "https://github.com/x-sheep/swift-property-based.git", from: "2.0.1"),
  ],
  targets: [
    // memfd_create, fallocate and sched_getcpu need _GNU_SOURCE (see swift-notes.md section 2).
    // zlib (-lz) inflates gzip'd kernel traces for `pagealloc replay`.
    .target(name: "CPageAllocShim", cSettings: [.define("_GNU_SOURCE")], linkerSettings: [.linkedLibrary("z")]),
    .target(name: "PageAlloc", dependencies: ["CPageAllocShim"]),
    .executableTarget(
      name: "pagealloc",
      dependencies: [
        "PageAlloc",
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
      ]),
    .testTarget(
      name: "PageAllocTests",
      dependencies: [
        "PageAlloc",
        .product(name: "PropertyBased", package: "swift-property-based"),
      ]),
  ]
)

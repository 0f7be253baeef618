import CPageAllocShim
import Glibc
import Synchronization

// kcompactd (mm/compaction.c): woken by the slow path and by proactive compaction, run on
// demand or by a background thread.

extension PageAllocator {
  // MARK: - kcompactd

  /// `wakeup_kcompactd()`: notes the order a failing allocation wanted and wakes the
  /// background kcompactd when it sleeps and some zone is worth compacting.
  func wakeupKcompactd(_ order: Int, _ highest: Int) {
    guard order > 0 else { return }
    let k = compaction.kcompactd
    let highestZi = highestZoneIndex(highest)
    let waiting = k.withLock { () -> Bool in
      k.maxOrder = max(k.maxOrder, order)
      k.highestZoneIdx = min(k.highestZoneIdx, highestZi)
      return k.waiting
    }
    guard waiting, kcompactdNodeSuitable(order: order, highestZi: highestZi) else { return }
    traceCompaction(.compactionWakeupKcompactd, [0, order, zones[highestZi].kind.rawValue])
    k.withLock {
      k.woken = true
      pthread_cond_signal(k.cond)
    }
  }

  /// The index of the highest populated zone of a kind at or below `kind`.
  func highestZoneIndex(_ kind: Int) -> Int {
    var best = 0
    for zi in 0..<zoneCount where zones[zi].kind.rawValue <= kind { best = zi }
    return best
  }

  /// `kcompactd_node_suitable()`.
  func kcompactdNodeSuitable(order: Int, highestZi: Int) -> Bool {
    for zi in 0...highestZi where zones[zi].present > 0 {
      if compactionSuitAllocationOrder(zi, order, zones[zi].kind.rawValue, .min, cma: false, async: false) == .continue
      {
        return true
      }
    }
    return false
  }

  /// `kcompactd_do_work()`: compacts zones up to the highest wanted for the largest order
  /// a failing allocation wanted.
  func kcompactdDoWork() {
    let k = compaction.kcompactd
    let (order, highestZi) = k.withLock { (k.maxOrder, k.highestZoneIdx) }
    guard order > 0 else { return }
    traceCompaction(.compactionKcompactdWake, [0, order, zones[highestZi].kind.rawValue])
    compaction.counters.kcompactdWake.wrappingAdd(1, ordering: .relaxed)
    asCompaction {
      for zi in 0...highestZi where zones[zi].present > 0 {
        if compactionDeferred(zi, order) { continue }
        let kind = zones[zi].kind.rawValue
        if compactionSuitAllocationOrder(zi, order, kind, .min, cma: false, async: false) != .continue { continue }
        var cc = CompactControl(zi: zi, order: order, gfp: .kernel, mode: .syncLight, highestZoneKind: kind)
        let status = compactZoneRun(&cc, capture: nil)
        if status == .success {
          compactionDeferReset(zi, order, allocSuccess: false)
        } else if status == .partialSkipped || status == .complete {
          drainAllPages()
          deferCompaction(zi, order)
        }
        compaction.counters.kcompactdMigrateScanned.wrappingAdd(cc.totalMigrateScanned, ordering: .relaxed)
        compaction.counters.kcompactdFreeScanned.wrappingAdd(cc.totalFreeScanned, ordering: .relaxed)
      }
    }
    k.withLock {
      if k.maxOrder <= order { k.maxOrder = 0 }
      if k.highestZoneIdx >= highestZi { k.highestZoneIdx = zoneCount - 1 }
    }
  }

  /// One round of kcompactd, as its loop runs after a wait: the work failing allocations
  /// asked for when it was woken with some (`timedOut` false), else the proactive check.
  /// Returns the milliseconds kcompactd would sleep next: the period, 64 times it when
  /// proactive compaction made no progress, or nil (forever) with proactiveness 0.
  /// Deterministic: tests and benchmarks drive kcompactd with it instead of the clock.
  @discardableResult
  public func runKcompactd(timedOut: Bool = true) -> Int? {
    let k = compaction.kcompactd
    let trigger = k.withLock { () -> Bool in
      let t = k.proactiveTrigger
      k.proactiveTrigger = false
      return t
    }
    var timeout: Int? = compaction.kcompactdIntervalMs
    if !timedOut && !trigger {
      kcompactdDoWork()
    } else {
      let before = extfragScore
      if shouldProactiveCompactNode(score: before) {
        _ = compactNode(proactive: true)
        if extfragScore >= before { timeout = compaction.kcompactdIntervalMs << compactMaxDeferShift }
      }
    }
    if compaction.proactiveness.load(ordering: .relaxed) == 0 { timeout = nil }
    // No kswapd: the skip bits are flushed when kcompactd goes back to sleep.
    resetIsolationSuitable()
    return timeout
  }

  /// Writing a non-zero `vm.compaction_proactiveness`: kcompactd checks at once.
  func triggerProactive() {
    let k = compaction.kcompactd
    traceCompaction(.compactionWakeupKcompactd, [0, -1, zones[zoneCount - 1].kind.rawValue])
    k.withLock {
      k.proactiveTrigger = true
      k.woken = true
      pthread_cond_signal(k.cond)
    }
  }

  /// Starts the background kcompactd thread (``CompactionConfiguration/backgroundThread``).
  ///
  /// The thread holds the allocator only weakly, and strongly only for one round of work:
  /// an allocator its program dropped is not kept alive by its own daemon. When the last
  /// reference goes during a round, the allocator's deinit runs on the daemon's thread,
  /// which then detaches instead of joining itself.
  func startKcompactd() {
    let k = compaction.kcompactd
    let context = KcompactdContext(self, k, intervalMs: compaction.kcompactdIntervalMs)
    var tid = pthread_t()
    let rc = pthread_create(
      &tid, nil,
      { arg in
        let context = Unmanaged<KcompactdContext>.fromOpaque(arg!).takeRetainedValue()
        context.loop()
        return nil
      }, Unmanaged.passRetained(context).toOpaque())
    if rc == 0 {
      k.withLock { k.thread = tid }
    } else {
      Unmanaged.passUnretained(context).release()
    }
  }

  /// Stops the background thread (the allocator's deinit): joins it, or detaches it when
  /// the deinit runs on it.
  func stopKcompactd() {
    let k = compaction.kcompactd
    let t = k.withLock { () -> pthread_t? in
      k.stop = true
      pthread_cond_signal(k.cond)
      return k.thread
    }
    guard let t else { return }
    if pthread_equal(t, pthread_self()) != 0 {
      pthread_detach(t)
    } else {
      pthread_join(t, nil)
    }
  }
}

/// What the background kcompactd thread holds: its wait queue, and the allocator weakly.
final class KcompactdContext: @unchecked Sendable {
  weak var allocator: PageAllocator?
  let k: KcompactdState
  let intervalMs: Int

  init(_ a: PageAllocator, _ k: KcompactdState, intervalMs: Int) {
    allocator = a
    self.k = k
    self.intervalMs = intervalMs
  }

  /// `kcompactd()`: sleep (with the timeout the last round asked for), then one round.
  /// The thread uses the last CPU's pcp set: a kernel thread runs on some CPU, and a fixed
  /// one keeps its rounds reproducible.
  func loop() {
    if let a = allocator { PageAllocator.setThreadCPU(a.cpuCount - 1) }
    var timeout: Int? = allocator.map { $0.compactionProactiveness == 0 ? nil : intervalMs } ?? nil
    while true {
      allocator?.traceCompaction(.compactionKcompactdSleep, [0])
      let (stop, woken) = k.withLock { () -> (Bool, Bool) in
        k.waiting = true
        if !k.woken && !k.stop {
          if let t = timeout {
            var ts = timespec()
            clock_gettime(CLOCK_MONOTONIC, &ts)
            let ns = Int(ts.tv_nsec) + (t % 1000) * 1_000_000
            ts.tv_sec += t / 1000 + ns / 1_000_000_000
            ts.tv_nsec = ns % 1_000_000_000
            while !k.woken && !k.stop {
              if pthread_cond_timedwait(k.cond, k.mutex, &ts) == ETIMEDOUT { break }
            }
          } else {
            while !k.woken && !k.stop { pthread_cond_wait(k.cond, k.mutex) }
          }
        }
        k.waiting = false
        let w = k.woken
        k.woken = false
        return (k.stop, w)
      }
      if stop { return }
      guard let a = allocator else { return }
      timeout = a.runKcompactd(timedOut: !woken)
      if k.withLock({ k.stop }) { return }
    }
  }
}

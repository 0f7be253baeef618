#ifndef CPAGEALLOC_SHIM_H
#define CPAGEALLOC_SHIM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

// sched_getcpu is declared by glibc only under _GNU_SOURCE, which the Swift importer does
// not see for this header; declare it ourselves so the inline wrapper costs nothing.
extern int sched_getcpu(void);

/// A per-thread CPU override (-1 when unset): lets tests and benchmarks pin a thread to a
/// logical CPU's pcp set without touching the real affinity.
extern _Thread_local int cpa_cpu_override;

// glibc (2.35+) registers an rseq area for every thread and exports where it is; the
// kernel keeps its cpu_id field (offset 4) current. Declared here for the same reason as
// sched_getcpu (<sys/rseq.h> needs _GNU_SOURCE-era kernel headers in the importer).
extern const ptrdiff_t __rseq_offset;
extern const unsigned int __rseq_size;

/// The CPU this thread runs on, or 0 if unknown: the rseq area's cpu_id when glibc
/// registered one (one load from the thread pointer, ~0.3 ns), else sched_getcpu()
/// (a vDSO call, ~4 ns on this VM, twice per alloc+free pair).
static inline __attribute__((always_inline)) int cpa_current_cpu(void) {
  int o = cpa_cpu_override;
  if (o >= 0) return o;
#if __has_builtin(__builtin_thread_pointer) && (defined(__x86_64__) || defined(__aarch64__))
  if (__rseq_size > 0) {
    int r = *(volatile const int *)((const char *)__builtin_thread_pointer() + __rseq_offset + 4);
    if (r >= 0) return r;
  }
#endif
  int c = sched_getcpu();
  return c < 0 ? 0 : c;
}

/// memfd_create(name, MFD_CLOEXEC); -1 and errno on failure.
int cpa_memfd_create(const char *name);

/// fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, len).
int cpa_punch_hole(int fd, off_t offset, off_t len);

/// Number of online CPUs.
int cpa_online_cpus(void);

/// Sets this thread's CPU override (-1 clears it).
void cpa_set_thread_cpu_override(int cpu);

/// This thread's CPU override (-1 when unset).
int cpa_thread_cpu_override(void);

/// The current thread's errno.
int cpa_errno(void);

/// The compaction state of the calling thread: the kernel keeps both in `current`
/// (`current->capture_control` and PF_MEMALLOC). `cpa_capture` points at the capture
/// control of a direct compaction this thread runs (NULL otherwise); `cpa_in_compaction`
/// is non-zero while the thread compacts or migrates, so that an allocation it makes
/// (a migration target) never starts a direct compaction of its own.
extern _Thread_local void *cpa_capture;
extern _Thread_local int cpa_in_compaction;

static inline __attribute__((always_inline)) void *cpa_get_capture(void) { return cpa_capture; }
static inline __attribute__((always_inline)) void cpa_set_capture(void *c) { cpa_capture = c; }
static inline __attribute__((always_inline)) int cpa_get_in_compaction(void) { return cpa_in_compaction; }
static inline __attribute__((always_inline)) void cpa_set_in_compaction(int v) { cpa_in_compaction = v; }

// The memory-debugging half: stack depot, tasks, page_owner records, the fault handler.
#include "CPageAllocShimDebug.h"

#endif

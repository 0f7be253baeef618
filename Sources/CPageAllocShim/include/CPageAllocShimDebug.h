#ifndef CPAGEALLOC_SHIM_DEBUG_H
#define CPAGEALLOC_SHIM_DEBUG_H

// The C half of PageAlloc's memory debugging (page_owner, debug_pagealloc): the call-stack
// capture and the stack depot, the task table, the image lookup the symbolizer starts from,
// and the SIGSEGV handler that reports a use after free. These live in C because the fault
// handler must be async-signal-safe (no Swift allocation, no locks), and it reads the same
// depot, task table and page_owner records the Swift side writes.

#include <stddef.h>
#include <stdint.h>

// MARK: - Stack capture and the stack depot (lib/stackdepot.c's role)

/// Return addresses a stack keeps (the kernel's PAGE_OWNER_STACK_DEPTH).
#define CPA_STACK_DEPTH 16

/// Handle of a stack the depot could not store (full): the kernel's failure_handle.
#define CPA_DEPOT_FAILURE 1u

/// Walks the frame-pointer chain of the calling thread and stores up to `max` return
/// addresses in `out`, after dropping the first `skip` (frame 0 is the return address into
/// the caller of this function). Every step is checked: the next frame must be above the
/// current one, aligned and inside the thread's stack. Returns how many were stored.
int cpa_stack_capture(uintptr_t *out, int max, int skip);

/// Interns `n` return addresses and returns their handle (2 and up), the same handle for
/// the same addresses; CPA_DEPOT_FAILURE when the depot is full, 0 when n is 0. Lock-free.
uint32_t cpa_depot_save(const uintptr_t *frames, int n);

/// Captures the caller's stack (dropping `skip` frames above the caller of this function)
/// and interns it: cpa_stack_capture + cpa_depot_save in one call.
uint32_t cpa_depot_capture(int skip);

/// Copies the frames of `handle` into `out` (up to `max`); returns their number (0 for an
/// unknown handle). Async-signal-safe.
int cpa_depot_fetch(uint32_t handle, uintptr_t *out, int max);

/// The symbolized text of `handle` stored with cpa_depot_set_text, or NULL.
/// Async-signal-safe.
const char *cpa_depot_text(uint32_t handle);

/// Stores a copy of `text` as the symbolized form of `handle` (the first text stored wins).
void cpa_depot_set_text(uint32_t handle, const char *text);

/// Distinct stacks stored so far.
uint32_t cpa_depot_count(void);

// MARK: - Tasks (current->pid, current->tgid, current->comm)

/// One thread as page_owner prints it.
typedef struct {
  int32_t pid;
  int32_t tgid;
  char comm[16];
} cpa_task;

/// The calling thread's task index (1 and up; 0 when the table is full), registered on the
/// thread's first call with gettid(), getpid() and its name (PR_GET_NAME).
uint16_t cpa_current_task_slow(void);

extern _Thread_local uint16_t cpa_tl_task;

static inline __attribute__((always_inline)) uint16_t cpa_current_task(void) {
  uint16_t t = cpa_tl_task;
  return t != 0 ? t : cpa_current_task_slow();
}

/// The task at `index`, or NULL. Async-signal-safe.
const cpa_task *cpa_task_at(uint16_t index);

// MARK: - page_owner records (struct page_owner in page_ext)

/// One page's page_owner record, 32 bytes. Timestamps are CLOCK_MONOTONIC nanoseconds
/// (the kernel's local_clock(), since boot) in the upper 56 bits of their word.
typedef struct {
  /// Allocation stack handle (0: none).
  uint32_t handle;
  /// Last free's stack handle (0: none).
  uint32_t free_handle;
  /// The allocation's gfp mask.
  uint32_t gfp;
  /// Task index of the allocation and of the last free.
  uint16_t task;
  uint16_t free_task;
  /// ts << 8 | order.
  uint64_t alloc_word;
  /// free_ts << 8 | flags: CPA_OWNER_SET, CPA_OWNER_ALLOCATED, last migrate reason + 1 in
  /// bits 4-7 (0: never migrated).
  uint64_t free_word;
} cpa_owner_record;

#define CPA_OWNER_SET 1u
#define CPA_OWNER_ALLOCATED 2u

// MARK: - Images, for the symbolizer

/// Finds the loaded object whose segments contain `address` (dl_iterate_phdr): stores its
/// load bias in `bias` and its path in `path` ("/proc/self/exe" for the main program).
/// Returns 0 when found, -1 otherwise.
int cpa_image_of(uintptr_t address, uintptr_t *bias, char *path, size_t capacity);

/// libswiftCore's demangler: a malloc'd C string, or NULL when `name` is not mangled.
extern char *swift_demangle(
  const char *name, size_t length, char *outputBuffer, size_t *outputBufferSize, uint32_t flags);

/// The C++ runtime's `__cxa_demangle` of `name` (malloc'd), or NULL.
char *cpa_cxx_demangle(const char *name);

// MARK: - The debug_pagealloc fault handler

/// Sets the gfp names the handler prints (composites first, as the kernel's table) and
/// the masks that pick the migratetype. Copies everything. Call before registering.
void cpa_fault_set_gfp_names(
  const uint32_t *masks, const char *const *names, int count, uint32_t movable, uint32_t reclaimable);

/// Registers an allocator's arena with the SIGSEGV handler (installing it on first use,
/// with an alternate stack for the calling thread): a fault at [start, end) is a touch of a
/// protected page, pfn base_pfn + offset / 4096. `zones` holds `zone_count` [lo, hi) pfn
/// pairs; `owner` is the page_owner record table indexed by pfn - base_pfn, or NULL.
/// Returns the region id, or -1 when the table is full.
int cpa_fault_register_arena(
  uintptr_t start, uintptr_t end, long base_pfn, const long *zones, int zone_count, const cpa_owner_record *owner);

/// Registers a second mapping of an arena's pages (the vmalloc window): `pfns[i]` is one
/// plus the pfn last mapped at page i of [start, end) (0: never mapped), resolved in the
/// arena region `arena`.
int cpa_fault_register_alias(uintptr_t start, uintptr_t end, const uint32_t *pfns, int arena);

/// Removes a region.
void cpa_fault_unregister(int id);

/// Whether the handler is installed (for tests).
int cpa_fault_handler_installed(void);

#endif

#ifndef _GNU_SOURCE
#error You must define _GNU_SOURCE
#endif
// Stack capture, the stack depot and the task table behind page_owner (see
// CPageAllocShimDebug.h). Process-wide, like the kernel's stack depot: every allocator of
// the process shares them, and the fault handler reads them without locks.
#include "CPageAllocShim.h"
#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

// MARK: - Stack capture

// The calling thread's stack bounds, looked up once per thread: a frame pointer outside
// them ends the walk (a frame of code built without frame pointers leaves garbage there).
static _Thread_local uintptr_t tl_stack_lo, tl_stack_hi;

static void load_stack_bounds(void) {
  pthread_attr_t attr;
  uintptr_t lo = 1, hi = UINTPTR_MAX;
  if (pthread_getattr_np(pthread_self(), &attr) == 0) {
    void *addr = NULL;
    size_t size = 0;
    if (pthread_attr_getstack(&attr, &addr, &size) == 0 && addr != NULL) {
      lo = (uintptr_t)addr;
      hi = lo + size;
    }
    pthread_attr_destroy(&attr);
  }
  tl_stack_lo = lo;
  tl_stack_hi = hi;
}

// The walk from frame `fp`: each frame record is [saved frame pointer, return address] on
// x86-64 and arm64 alike.
static inline __attribute__((always_inline)) int walk(uintptr_t *fp, uintptr_t *out, int max, int skip) {
  if (tl_stack_hi == 0) load_stack_bounds();
  uintptr_t lo = tl_stack_lo, hi = tl_stack_hi;
  int n = 0;
  while (n < max) {
    uintptr_t f = (uintptr_t)fp;
    if (f < lo || f > hi - 2 * sizeof(uintptr_t) || (f & (sizeof(uintptr_t) - 1)) != 0) break;
    uintptr_t ret = fp[1];
    uintptr_t *next = (uintptr_t *)fp[0];
    if (ret == 0) break;
    if (skip > 0) {
      skip--;
    } else {
      out[n++] = ret;
    }
    if ((uintptr_t)next <= f) break;
    fp = next;
  }
  return n;
}

__attribute__((noinline)) int cpa_stack_capture(uintptr_t *out, int max, int skip) {
  int n = walk((uintptr_t *)__builtin_frame_address(0), out, max, skip);
  // Not a tail call: this frame must stay while the walk reads it.
  __asm__ __volatile__("" ::: "memory");
  return n;
}

// MARK: - The depot

// Records are fixed-size (the depth is small), stored in one MAP_NORESERVE reservation
// that never moves, so a handle stays valid for the process's life and the fault handler
// can read a record with plain loads. The index is an open-addressing table of handles;
// slots go from 0 to a handle once, by compare-and-swap, so lookups take no lock.
typedef struct {
  uint32_t hash;
  uint32_t count;
  uintptr_t frames[CPA_STACK_DEPTH];
} depot_record;

#define DEPOT_CAPACITY (1u << 18)
#define DEPOT_TABLE (1u << 19)
// Handles 0 (none) and 1 (failure) name no record.
#define DEPOT_FIRST 2u

static depot_record *depot_records;
static _Atomic uint32_t *depot_table;
static _Atomic(const char *) *depot_texts;
static _Atomic uint32_t depot_next;
static _Atomic uint32_t depot_stored;
static pthread_once_t depot_once = PTHREAD_ONCE_INIT;

static void *reserve(size_t bytes) {
  void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  return p == MAP_FAILED ? NULL : p;
}

static void depot_init(void) {
  depot_records = reserve(sizeof(depot_record) * (size_t)DEPOT_CAPACITY);
  depot_table = reserve(sizeof(uint32_t) * (size_t)DEPOT_TABLE);
  depot_texts = reserve(sizeof(char *) * (size_t)DEPOT_CAPACITY);
  if (depot_records == NULL || depot_table == NULL || depot_texts == NULL) {
    depot_records = NULL;
  }
}

static inline uint32_t hash_frames(const uintptr_t *frames, int n) {
  uint64_t h = 0x9E3779B97F4A7C15ull ^ (uint64_t)n;
  for (int i = 0; i < n; i++) {
    h ^= frames[i];
    h *= 0xFF51AFD7ED558CCDull;
    h ^= h >> 32;
  }
  return (uint32_t)h;
}

static inline const depot_record *record_of(uint32_t handle) {
  if (depot_records == NULL || handle < DEPOT_FIRST) return NULL;
  uint32_t i = handle - DEPOT_FIRST;
  if (i >= DEPOT_CAPACITY || i >= atomic_load_explicit(&depot_next, memory_order_acquire)) return NULL;
  return &depot_records[i];
}

uint32_t cpa_depot_save(const uintptr_t *frames, int n) {
  if (n <= 0) return 0;
  if (n > CPA_STACK_DEPTH) n = CPA_STACK_DEPTH;
  pthread_once(&depot_once, depot_init);
  if (depot_records == NULL) return CPA_DEPOT_FAILURE;
  uint32_t h = hash_frames(frames, n);
  uint32_t mine = 0;  // a record this call filled in but has not published yet
  uint32_t i = h & (DEPOT_TABLE - 1);
  for (uint32_t probes = 0; probes < DEPOT_TABLE; probes++) {
    uint32_t e = atomic_load_explicit(&depot_table[i], memory_order_acquire);
    if (e == 0) {
      if (mine == 0) {
        uint32_t idx = atomic_fetch_add_explicit(&depot_next, 1, memory_order_relaxed);
        if (idx >= DEPOT_CAPACITY) return CPA_DEPOT_FAILURE;
        depot_record *r = &depot_records[idx];
        r->hash = h;
        r->count = (uint32_t)n;
        memcpy(r->frames, frames, sizeof(uintptr_t) * (size_t)n);
        mine = idx + DEPOT_FIRST;
      }
      uint32_t expected = 0;
      if (atomic_compare_exchange_strong_explicit(
              &depot_table[i], &expected, mine, memory_order_release, memory_order_acquire)) {
        atomic_fetch_add_explicit(&depot_stored, 1, memory_order_relaxed);
        return mine;
      }
      e = expected;  // another thread published here first: compare with its stack
    }
    const depot_record *r = &depot_records[e - DEPOT_FIRST];
    if (r->hash == h && r->count == (uint32_t)n && memcmp(r->frames, frames, sizeof(uintptr_t) * (size_t)n) == 0) {
      // `mine`, if any, stays unpublished: a wasted record, never reachable.
      return e;
    }
    i = (i + 1) & (DEPOT_TABLE - 1);
  }
  return CPA_DEPOT_FAILURE;
}

__attribute__((noinline)) uint32_t cpa_depot_capture(int skip) {
  uintptr_t frames[CPA_STACK_DEPTH];
  // Frame 0 of the walk is the return into this function's caller.
  int n = walk((uintptr_t *)__builtin_frame_address(0), frames, CPA_STACK_DEPTH, skip);
  uint32_t h = cpa_depot_save(frames, n);
  __asm__ __volatile__("" ::: "memory");
  return h;
}

int cpa_depot_fetch(uint32_t handle, uintptr_t *out, int max) {
  const depot_record *r = record_of(handle);
  if (r == NULL) return 0;
  int n = (int)r->count;
  if (n > max) n = max;
  for (int i = 0; i < n; i++) out[i] = r->frames[i];
  return n;
}

const char *cpa_depot_text(uint32_t handle) {
  if (record_of(handle) == NULL || depot_texts == NULL) return NULL;
  return atomic_load_explicit(&depot_texts[handle - DEPOT_FIRST], memory_order_acquire);
}

void cpa_depot_set_text(uint32_t handle, const char *text) {
  if (record_of(handle) == NULL || depot_texts == NULL || text == NULL) return;
  char *copy = strdup(text);
  if (copy == NULL) return;
  const char *expected = NULL;
  if (!atomic_compare_exchange_strong_explicit(
          &depot_texts[handle - DEPOT_FIRST], &expected, copy, memory_order_release, memory_order_relaxed)) {
    free(copy);
  }
}

uint32_t cpa_depot_count(void) { return atomic_load_explicit(&depot_stored, memory_order_relaxed); }

// MARK: - Tasks

#define TASK_CAPACITY 65535u

_Thread_local uint16_t cpa_tl_task;
static cpa_task *tasks;
static _Atomic uint32_t task_next = 1;
static pthread_once_t task_once = PTHREAD_ONCE_INIT;

// A forked child is another process: its one thread registers again.
static void task_after_fork(void) { cpa_tl_task = 0; }

static void task_init(void) {
  tasks = reserve(sizeof(cpa_task) * (TASK_CAPACITY + 1));
  pthread_atfork(NULL, NULL, task_after_fork);
}

uint16_t cpa_current_task_slow(void) {
  pthread_once(&task_once, task_init);
  if (tasks == NULL) return 0;
  uint32_t i = atomic_fetch_add_explicit(&task_next, 1, memory_order_relaxed);
  if (i > TASK_CAPACITY) {
    atomic_store_explicit(&task_next, TASK_CAPACITY + 1, memory_order_relaxed);
    return 0;
  }
  cpa_task *t = &tasks[i];
  t->pid = (int32_t)gettid();
  t->tgid = (int32_t)getpid();
  memset(t->comm, 0, sizeof t->comm);
  if (prctl(PR_GET_NAME, t->comm, 0, 0, 0) != 0) strcpy(t->comm, "?");
  t->comm[15] = 0;
  atomic_thread_fence(memory_order_release);
  cpa_tl_task = (uint16_t)i;
  return (uint16_t)i;
}

const cpa_task *cpa_task_at(uint16_t index) {
  if (tasks == NULL || index == 0 || index >= atomic_load_explicit(&task_next, memory_order_acquire)) return NULL;
  return &tasks[index];
}

// MARK: - Images

struct image_query {
  uintptr_t address;
  uintptr_t bias;
  const char *name;
  int found;
};

static int image_callback(struct dl_phdr_info *info, size_t size, void *data) {
  (void)size;
  struct image_query *q = data;
  for (int i = 0; i < info->dlpi_phnum; i++) {
    const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
    if (ph->p_type != PT_LOAD) continue;
    uintptr_t start = info->dlpi_addr + ph->p_vaddr;
    if (q->address >= start && q->address < start + ph->p_memsz) {
      q->bias = info->dlpi_addr;
      q->name = info->dlpi_name;
      q->found = 1;
      return 1;
    }
  }
  return 0;
}

int cpa_image_of(uintptr_t address, uintptr_t *bias, char *path, size_t capacity) {
  struct image_query q = {address, 0, NULL, 0};
  dl_iterate_phdr(image_callback, &q);
  if (!q.found || capacity == 0) return -1;
  const char *name = (q.name != NULL && q.name[0] != 0) ? q.name : "/proc/self/exe";
  strncpy(path, name, capacity - 1);
  path[capacity - 1] = 0;
  *bias = q.bias;
  return 0;
}

// The C++ demangler of the C++ runtime the Swift runtime links, looked up at run time so
// that this library does not link it itself.
char *cpa_cxx_demangle(const char *name) {
  typedef char *(*demangler)(const char *, char *, size_t *, int *);
  static _Atomic(demangler) fn;
  static _Atomic int looked;
  if (!atomic_load_explicit(&looked, memory_order_acquire)) {
    atomic_store_explicit(&fn, (demangler)dlsym(RTLD_DEFAULT, "__cxa_demangle"), memory_order_release);
    atomic_store_explicit(&looked, 1, memory_order_release);
  }
  demangler d = atomic_load_explicit(&fn, memory_order_acquire);
  if (d == NULL) return NULL;
  int status = 0;
  char *out = d(name, NULL, NULL, &status);
  return status == 0 ? out : NULL;
}

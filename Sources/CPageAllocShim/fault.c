#ifndef _GNU_SOURCE
#error You must define _GNU_SOURCE
#endif
// The debug_pagealloc fault handler. With debug_pagealloc on, a free page's arena bytes
// are PROT_NONE, so a read or write through a stale pointer raises SIGSEGV at once. This
// handler, installed for the registered arenas, says which pfn was touched and, from the
// page_owner record, who allocated and who freed it, then puts the previous action back so
// the process dies as it would have (or the previous handler, such as the Swift runtime's
// backtracer, reports the crash too). A fault outside every arena goes straight to the
// previous handler.
//
// Everything here is async-signal-safe: the regions, records, depot and task table are read
// with plain loads; the text is built in a stack buffer and written with write(2).
#include "CPageAllocShim.h"
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#define MAX_REGIONS 64
#define MAX_ZONES 4
#define PAGE_SHIFT 12

typedef struct {
  _Atomic int used;  // 0 free, 1 being written, 2 live
  int kind;          // 1 arena, 2 alias
  uintptr_t start, end;
  long base_pfn;
  long zones[2 * MAX_ZONES];
  int zone_count;
  const cpa_owner_record *owner;
  const uint32_t *alias_pfns;
  int arena;
} region;

static region regions[MAX_REGIONS];
static pthread_mutex_t register_lock = PTHREAD_MUTEX_INITIALIZER;
static struct sigaction previous;
static _Atomic int installed;

#define MAX_GFP_NAMES 64
static uint32_t gfp_masks[MAX_GFP_NAMES];
static const char *gfp_names[MAX_GFP_NAMES];
static int gfp_name_count;
static uint32_t gfp_movable, gfp_reclaimable;

static const char *const migratetype_names[] = {"Unmovable", "Movable", "Reclaimable", "HighAtomic", "CMA", "Isolate"};

// MARK: - Formatting into a buffer (no stdio in a signal handler)

typedef struct {
  char data[4096];
  size_t used;
} text;

static void flush(text *t) {
  size_t off = 0;
  while (off < t->used) {
    ssize_t w = write(2, t->data + off, t->used - off);
    if (w <= 0) break;
    off += (size_t)w;
  }
  t->used = 0;
}

static void put(text *t, const char *s) {
  while (*s) {
    if (t->used == sizeof t->data) flush(t);
    t->data[t->used++] = *s++;
  }
}

static void put_unsigned(text *t, uint64_t v, int base, int width) {
  char digits[32];
  int n = 0;
  do {
    uint64_t d = v % (uint64_t)base;
    digits[n++] = (char)(d < 10 ? '0' + d : 'a' + d - 10);
    v /= (uint64_t)base;
  } while (v != 0 && n < 31);
  while (n < width && n < 31) digits[n++] = '0';
  char out[33];
  int k = 0;
  while (n > 0) out[k++] = digits[--n];
  out[k] = 0;
  put(t, out);
}

static void put_signed(text *t, int64_t v) {
  if (v < 0) {
    put(t, "-");
    put_unsigned(t, (uint64_t)(-v), 10, 0);
  } else {
    put_unsigned(t, (uint64_t)v, 10, 0);
  }
}

static void put_hex(text *t, uint64_t v) {
  put(t, "0x");
  put_unsigned(t, v, 16, 0);
}

// `%#x(%pGg)`: composites first, each consuming its bits, leftovers in hex.
static void put_gfp(text *t, uint32_t gfp) {
  if (gfp == 0) {
    put(t, "0(none)");
    return;
  }
  put_hex(t, gfp);
  put(t, "(");
  uint32_t rest = gfp;
  int first = 1;
  for (int i = 0; i < gfp_name_count; i++) {
    uint32_t m = gfp_masks[i];
    if (m != 0 && (rest & m) == m) {
      if (!first) put(t, "|");
      put(t, gfp_names[i]);
      rest &= ~m;
      first = 0;
    }
  }
  if (rest != 0) {
    if (!first) put(t, "|");
    put_hex(t, rest);
  }
  put(t, ")");
}

static void put_stack(text *t, uint32_t handle, const char *missing) {
  const char *s = cpa_depot_text(handle);
  if (s != NULL) {
    put(t, s);
    return;
  }
  uintptr_t frames[CPA_STACK_DEPTH];
  int n = cpa_depot_fetch(handle, frames, CPA_STACK_DEPTH);
  if (n == 0) {
    put(t, missing);
    put(t, "\n");
    return;
  }
  for (int i = 0; i < n; i++) {
    put(t, " ");
    put_hex(t, frames[i]);
    put(t, "\n");
  }
}

static void put_task(text *t, uint16_t index, const char *pid, const char *tgid, int comm) {
  const cpa_task *k = cpa_task_at(index);
  put(t, pid);
  put_signed(t, k ? k->pid : -1);
  put(t, tgid);
  put_signed(t, k ? k->tgid : -1);
  if (comm) {
    put(t, " (");
    put(t, k ? k->comm : "?");
    put(t, ")");
  }
}

// dump_page_owner()'s lines, from the record the allocator keeps for the page.
static void put_owner(text *t, const cpa_owner_record *r) {
  uint64_t flags = r->free_word & 0xff;
  if (!(flags & CPA_OWNER_SET)) {
    put(t, "page_owner info is not present (never set?)\n");
    return;
  }
  put(t, (flags & CPA_OWNER_ALLOCATED) ? "page_owner tracks the page as allocated\n"
                                       : "page_owner tracks the page as freed\n");
  uint32_t mt = (r->gfp & gfp_movable) ? 1 : (r->gfp & gfp_reclaimable) ? 2 : 0;
  put(t, "page last allocated via order ");
  put_unsigned(t, r->alloc_word & 0xff, 10, 0);
  put(t, ", migratetype ");
  put(t, migratetype_names[mt]);
  put(t, ", gfp_mask ");
  put_gfp(t, r->gfp);
  put_task(t, r->task, ", pid ", ", tgid ", 1);
  put(t, ", ts ");
  put_unsigned(t, r->alloc_word >> 8, 10, 0);
  put(t, "\n");
  put_stack(t, r->handle, "page_owner allocation stack trace missing");
  put_task(t, r->free_task, "page last free pid ", " tgid ", 0);
  put(t, " ts ");
  put_unsigned(t, r->free_word >> 8, 10, 0);
  put(t, " stack trace:\n");
  put_stack(t, r->free_handle, "page_owner free stack trace missing");
}

// MARK: - The handler

static void chain(int sig, siginfo_t *info, void *uc) {
  // Put the previous action back and let the fault happen again under it: the process
  // dies, or the previous handler reports, exactly as without us.
  struct sigaction p = previous;
  if (!(p.sa_flags & SA_SIGINFO) && p.sa_handler == SIG_IGN) p.sa_handler = SIG_DFL;
  if ((p.sa_flags & SA_SIGINFO) && p.sa_sigaction != NULL) {
    p.sa_sigaction(sig, info, uc);
    return;
  }
  if (p.sa_handler != SIG_DFL && p.sa_handler != SIG_IGN) {
    p.sa_handler(sig);
    return;
  }
  sigaction(SIGSEGV, &p, NULL);
}

static const region *region_at(uintptr_t a) {
  for (int i = 0; i < MAX_REGIONS; i++) {
    const region *r = &regions[i];
    if (atomic_load_explicit(&r->used, memory_order_acquire) == 2 && a >= r->start && a < r->end) return r;
  }
  return NULL;
}

static void handler(int sig, siginfo_t *info, void *uc) {
  int saved_errno = errno;
  uintptr_t a = (uintptr_t)info->si_addr;
  const region *r = region_at(a);
  if (r == NULL) {
    errno = saved_errno;
    chain(sig, info, uc);
    return;
  }
  text t;
  t.used = 0;
  put(&t, "BUG: unable to handle page fault for address: ");
  put_unsigned(&t, a, 16, 16);
  put(&t, "\n");
#if defined(__x86_64__)
  uint64_t err = (uint64_t)((ucontext_t *)uc)->uc_mcontext.gregs[REG_ERR];
  put(&t, "#PF: user ");
  put(&t, (err & 0x10) ? "instruction fetch" : (err & 2) ? "write access" : "read access");
  put(&t, " in user mode\n#PF: error_code(0x");
  put_unsigned(&t, err, 16, 4);
  put(&t, ") - ");
  put(&t, (err & 1) ? "permissions violation\n" : "not-present page\n");
#endif
  long pfn = -1;
  const region *arena = r;
  if (r->kind == 2) {
    uintptr_t page = (a - r->start) >> PAGE_SHIFT;
    uint32_t v = r->alias_pfns ? r->alias_pfns[page] : 0;
    int ai = r->arena;
    arena = (ai >= 0 && ai < MAX_REGIONS && atomic_load_explicit(&regions[ai].used, memory_order_acquire) == 2)
                ? &regions[ai]
                : NULL;
    if (v != 0) pfn = (long)v - 1;
    put(&t, "pagealloc: use after vfree: vmalloc address ");
    put_hex(&t, a);
    if (pfn >= 0) {
      put(&t, " last mapped pfn ");
      put_hex(&t, (uint64_t)pfn);
    } else {
      put(&t, " was never mapped (guard page or unused window)");
    }
    put(&t, "\n");
  } else {
    pfn = r->base_pfn + (long)((a - r->start) >> PAGE_SHIFT);
    int in_zone = 0;
    for (int i = 0; i < r->zone_count; i++) {
      if (pfn >= r->zones[2 * i] && pfn < r->zones[2 * i + 1]) in_zone = 1;
    }
    if (in_zone) {
      put(&t, "pagealloc: use after free: pfn ");
      put_hex(&t, (uint64_t)pfn);
      put(&t, " offset ");
      put_hex(&t, a & ((1u << PAGE_SHIFT) - 1));
      put(&t, " is a free page (DEBUG_PAGEALLOC)\n");
    } else {
      put(&t, "pagealloc: access to pfn ");
      put_hex(&t, (uint64_t)pfn);
      put(&t, " outside every zone (reserved or a hole)\n");
    }
  }
  if (arena != NULL && arena->owner != NULL && pfn >= arena->base_pfn &&
      (uintptr_t)(pfn - arena->base_pfn) < ((arena->end - arena->start) >> PAGE_SHIFT)) {
    put_owner(&t, &arena->owner[pfn - arena->base_pfn]);
  }
  flush(&t);
  errno = saved_errno;
  chain(sig, info, uc);
}

static int install(void) {
  if (atomic_load_explicit(&installed, memory_order_acquire)) return 0;
  // An alternate stack for the registering thread, unless it has one already.
  stack_t cur;
  if (sigaltstack(NULL, &cur) == 0 && (cur.ss_flags & SS_DISABLE)) {
    size_t size = 64 * 1024;
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p != MAP_FAILED) {
      stack_t ss = {.ss_sp = p, .ss_size = size, .ss_flags = 0};
      sigaltstack(&ss, NULL);
    }
  }
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = handler;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGSEGV, &sa, &previous) != 0) return -1;
  atomic_store_explicit(&installed, 1, memory_order_release);
  return 0;
}

static int take_slot(void) {
  for (int i = 0; i < MAX_REGIONS; i++) {
    int expected = 0;
    if (atomic_compare_exchange_strong(&regions[i].used, &expected, 1)) return i;
  }
  return -1;
}

void cpa_fault_set_gfp_names(
    const uint32_t *masks, const char *const *names, int count, uint32_t movable, uint32_t reclaimable) {
  pthread_mutex_lock(&register_lock);
  if (gfp_name_count == 0) {
    if (count > MAX_GFP_NAMES) count = MAX_GFP_NAMES;
    for (int i = 0; i < count; i++) {
      gfp_masks[i] = masks[i];
      gfp_names[i] = strdup(names[i]);
    }
    gfp_movable = movable;
    gfp_reclaimable = reclaimable;
    gfp_name_count = count;
  }
  pthread_mutex_unlock(&register_lock);
}

int cpa_fault_register_arena(
    uintptr_t start, uintptr_t end, long base_pfn, const long *zones, int zone_count, const cpa_owner_record *owner) {
  pthread_mutex_lock(&register_lock);
  int id = -1;
  if (install() == 0 && (id = take_slot()) >= 0) {
    region *r = &regions[id];
    r->kind = 1;
    r->start = start;
    r->end = end;
    r->base_pfn = base_pfn;
    r->zone_count = zone_count < MAX_ZONES ? zone_count : MAX_ZONES;
    for (int i = 0; i < 2 * r->zone_count; i++) r->zones[i] = zones[i];
    r->owner = owner;
    r->alias_pfns = NULL;
    r->arena = -1;
    atomic_store_explicit(&r->used, 2, memory_order_release);
  }
  pthread_mutex_unlock(&register_lock);
  return id;
}

int cpa_fault_register_alias(uintptr_t start, uintptr_t end, const uint32_t *pfns, int arena) {
  pthread_mutex_lock(&register_lock);
  int id = -1;
  if (install() == 0 && (id = take_slot()) >= 0) {
    region *r = &regions[id];
    r->kind = 2;
    r->start = start;
    r->end = end;
    r->base_pfn = 0;
    r->zone_count = 0;
    r->owner = NULL;
    r->alias_pfns = pfns;
    r->arena = arena;
    atomic_store_explicit(&r->used, 2, memory_order_release);
  }
  pthread_mutex_unlock(&register_lock);
  return id;
}

void cpa_fault_unregister(int id) {
  if (id < 0 || id >= MAX_REGIONS) return;
  atomic_store_explicit(&regions[id].used, 0, memory_order_release);
}

int cpa_fault_handler_installed(void) { return atomic_load_explicit(&installed, memory_order_acquire); }

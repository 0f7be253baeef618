#ifndef _GNU_SOURCE
#error You must define _GNU_SOURCE
#endif
#include "CPageAllocShim.h"
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/sysinfo.h>
#include <unistd.h>

int cpa_memfd_create(const char *name) { return memfd_create(name, MFD_CLOEXEC); }

int cpa_punch_hole(int fd, off_t offset, off_t len) {
  return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, len);
}

int cpa_online_cpus(void) { return get_nprocs(); }

_Thread_local int cpa_cpu_override = -1;
void cpa_set_thread_cpu_override(int cpu) { cpa_cpu_override = cpu; }
int cpa_thread_cpu_override(void) { return cpa_cpu_override; }

int cpa_errno(void) { return errno; }

_Thread_local void *cpa_capture = 0;
_Thread_local int cpa_in_compaction = 0;

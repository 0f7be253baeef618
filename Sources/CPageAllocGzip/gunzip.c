#include "CPageAllocGzip.h"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

// Anonymous memory for the inflated text, grown with mremap (no copy). (MADV_HUGEPAGE
// was tried: with THP defrag on madvise it can stall in compaction, so it is not used.)
static unsigned char *big_alloc(size_t size) {
  void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  return p == MAP_FAILED ? NULL : p;
}

void cpa_free_file_bytes(unsigned char *p, size_t cap) {
  if (p != NULL && cap > 0) munmap(p, cap);
}

// Opens a regular file for reading; -1 with a message in err otherwise.
static int open_regular(const char *path, struct stat *st, char *err, size_t errlen) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    snprintf(err, errlen, "%s", strerror(errno));
    return -1;
  }
  if (fstat(fd, st) != 0 || !S_ISREG(st->st_mode)) {
    snprintf(err, errlen, "%s", S_ISDIR(st->st_mode) ? "is a directory" : "not a regular file");
    close(fd);
    return -1;
  }
  return fd;
}

// Whether the file starts with the gzip magic bytes 1f 8b.
static int has_gzip_magic(int fd) {
  unsigned char magic[2] = {0, 0};
  return pread(fd, magic, 2, 0) == 2 && magic[0] == 0x1f && magic[1] == 0x8b;
}

int cpa_read_maybe_gzip(const char *path, unsigned char **out, size_t *len, size_t *capOut, char *err,
                        size_t errlen) {
  *out = NULL;
  *len = 0;
  *capOut = 0;
  struct stat st;
  int fd = open_regular(path, &st, err, errlen);
  if (fd < 0) return -1;
  if (!has_gzip_magic(fd)) {
    // Plain text: map the file.
    if (st.st_size == 0) {
      close(fd);
      return 0;
    }
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, 0);
    int e = errno;
    close(fd);
    if (p == MAP_FAILED) {
      snprintf(err, errlen, "%s", strerror(e));
      return -1;
    }
    *out = p;
    *len = (size_t)st.st_size;
    *capOut = (size_t)st.st_size;
    return 0;
  }
  // gzip: size the buffer from the trailer (ISIZE, the input size mod 2^32).
  size_t cap = 1 << 21;
  unsigned char trailer[4];
  if (st.st_size >= 18 && pread(fd, trailer, 4, st.st_size - 4) == 4) {
    size_t isize = (size_t)trailer[0] | (size_t)trailer[1] << 8 | (size_t)trailer[2] << 16 | (size_t)trailer[3] << 24;
    if (isize + (1 << 16) > cap) cap = (isize + (1 << 16) + (1 << 21) - 1) & ~(((size_t)1 << 21) - 1);
  }
  gzFile f = gzdopen(fd, "rb");
  if (f == NULL) {
    close(fd);
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  gzbuffer(f, 1 << 17);
  unsigned char *buf = big_alloc(cap);
  if (buf == NULL) {
    gzclose(f);
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  size_t n = 0;
  int rc = 0;
  for (;;) {
    if (cap - n < (1 << 16)) {
      void *nb = mremap(buf, cap, cap * 2, MREMAP_MAYMOVE);
      if (nb == MAP_FAILED) {
        snprintf(err, errlen, "out of memory");
        rc = -1;
        break;
      }
      buf = nb;
      cap *= 2;
    }
    size_t want = cap - n > (1u << 30) ? (1u << 30) : cap - n;
    int got = gzread(f, buf + n, (unsigned)want);
    if (got < 0) {
      int e;
      const char *msg = gzerror(f, &e);
      snprintf(err, errlen, "%s", e == Z_ERRNO ? strerror(errno) : msg);
      rc = -1;
      break;
    }
    if (got == 0) {
      int e;
      const char *msg = gzerror(f, &e);
      if (e != Z_OK) {
        // Z_BUF_ERROR here means the gzip stream ended early: a truncated file.
        snprintf(err, errlen, "%s", e == Z_BUF_ERROR ? "truncated gzip stream (unexpected end of file)" : msg);
        rc = -1;
      }
      break;
    }
    n += (size_t)got;
  }
  gzclose(f);
  *out = buf;
  *len = n;
  *capOut = cap;
  return rc;
}

// Streaming: whether a file is gzip (1), plain (0), or unreadable (-1, message in err).
int cpa_file_is_gzip(const char *path, char *err, size_t errlen) {
  struct stat st;
  int fd = open_regular(path, &st, err, errlen);
  if (fd < 0) return -1;
  int gz = has_gzip_magic(fd);
  close(fd);
  return gz;
}

void *cpa_gz_open(const char *path, char *err, size_t errlen) {
  gzFile f = gzopen(path, "rb");
  if (f == NULL) {
    snprintf(err, errlen, "%s", errno ? strerror(errno) : "out of memory");
    return NULL;
  }
  gzbuffer(f, 1 << 17);
  return f;
}

long cpa_gz_read(void *h, unsigned char *buf, size_t len, char *err, size_t errlen) {
  gzFile f = h;
  int got = gzread(f, buf, (unsigned)(len > (1u << 30) ? (1u << 30) : len));
  int e;
  if (got < 0) {
    const char *msg = gzerror(f, &e);
    snprintf(err, errlen, "%s", e == Z_ERRNO ? strerror(errno) : msg);
    return -1;
  }
  if (got == 0) {
    const char *msg = gzerror(f, &e);
    if (e != Z_OK) {
      snprintf(err, errlen, "%s", e == Z_BUF_ERROR ? "truncated gzip stream (unexpected end of file)" : msg);
      return -1;
    }
  }
  return got;
}

void cpa_gz_close(void *h) { gzclose((gzFile)h); }

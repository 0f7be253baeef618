#include "CPageAllocShim.h"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

// Reads a whole file, inflating it when it is gzip (gzread passes plain files through).
// On success returns 0 and a malloc'd buffer in *out (free with free()). On failure
// returns -1 with *out/*len holding what was decoded so far (possibly NULL/0) and a
// message in err.
int cpa_read_maybe_gzip(const char *path, unsigned char **out, size_t *len, char *err, size_t errlen) {
  *out = NULL;
  *len = 0;
  gzFile f = gzopen(path, "rb");
  if (f == NULL) {
    snprintf(err, errlen, "%s", strerror(errno ? errno : ENOMEM));
    return -1;
  }
  gzbuffer(f, 1 << 17);
  size_t cap = 1 << 20, n = 0;
  unsigned char *buf = malloc(cap);
  if (buf == NULL) {
    gzclose(f);
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  int rc = 0;
  for (;;) {
    if (cap - n < (1 << 16)) {
      size_t ncap = cap * 2;
      unsigned char *nb = realloc(buf, ncap);
      if (nb == NULL) {
        snprintf(err, errlen, "out of memory");
        rc = -1;
        break;
      }
      buf = nb;
      cap = ncap;
    }
    int got = gzread(f, buf + n, (unsigned)(cap - n > (1u << 30) ? (1u << 30) : cap - n));
    if (got < 0) {
      int e;
      const char *m = gzerror(f, &e);
      snprintf(err, errlen, "%s", e == Z_ERRNO ? strerror(errno) : m);
      rc = -1;
      break;
    }
    if (got == 0) {
      int e;
      const char *m = gzerror(f, &e);
      if (e != Z_OK) {
        // Z_BUF_ERROR here means the gzip stream ended early: a truncated file.
        snprintf(err, errlen, "%s", e == Z_BUF_ERROR ? "truncated gzip stream (unexpected end of file)" : m);
        rc = -1;
      }
      break;
    }
    n += (size_t)got;
  }
  gzclose(f);
  *out = buf;
  *len = n;
  return rc;
}

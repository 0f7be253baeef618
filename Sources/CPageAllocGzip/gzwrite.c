#include "CPageAllocGzip.h"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

// Writing a recorded trace as gzip: zlib's gzwrite on a file created 0644.

void *cpa_gz_create(const char *path, int level, char *err, size_t errlen) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    snprintf(err, errlen, "%s", strerror(errno));
    return NULL;
  }
  char mode[8];
  snprintf(mode, sizeof mode, "wb%d", level < 1 || level > 9 ? 6 : level);
  gzFile g = gzdopen(fd, mode);
  if (g == NULL) {
    snprintf(err, errlen, "cannot start a gzip stream");
    close(fd);
    return NULL;
  }
  return g;
}

int cpa_gz_write(void *h, const unsigned char *buf, size_t len, char *err, size_t errlen) {
  gzFile g = (gzFile)h;
  while (len > 0) {
    unsigned piece = len > (1u << 30) ? (1u << 30) : (unsigned)len;
    int n = gzwrite(g, buf, piece);
    if (n <= 0) {
      int code = 0;
      const char *m = gzerror(g, &code);
      snprintf(err, errlen, "%s", code == Z_ERRNO ? strerror(errno) : m);
      return -1;
    }
    buf += n;
    len -= (size_t)n;
  }
  return 0;
}

int cpa_gz_finish(void *h, char *err, size_t errlen) {
  int rc = gzclose_w((gzFile)h);
  if (rc != Z_OK) {
    snprintf(err, errlen, "%s", rc == Z_ERRNO ? strerror(errno) : "gzip stream not finished");
    return -1;
  }
  return 0;
}

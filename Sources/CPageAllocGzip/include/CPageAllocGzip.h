#ifndef CPAGEALLOC_GZIP_H
#define CPAGEALLOC_GZIP_H

#include <stddef.h>

// Reading kernel traces that may be gzip'd, and writing recorded ones: the only user of
// zlib in the package, kept in a target of its own so the allocator core links no zlib.
// Also the recorder's signal pipe (C, so that the handler is async-signal-safe).

/// Reads a whole file, inflating gzip with zlib (a plain file is mapped). 0 on success;
/// -1 with a message in err, and what was decoded so far in *out/*len. Free *out with
/// cpa_free_file_bytes(*out, *cap).
int cpa_read_maybe_gzip(const char *path, unsigned char **out, size_t *len, size_t *cap, char *err, size_t errlen);
void cpa_free_file_bytes(unsigned char *p, size_t cap);

/// Streaming gzip: 1 when the file starts with the gzip magic, 0 when not, -1 (message in
/// err) when it cannot be read. cpa_gz_read returns the bytes inflated (0 at the end, -1
/// with a message on a corrupt or truncated stream).
int cpa_file_is_gzip(const char *path, char *err, size_t errlen);
void *cpa_gz_open(const char *path, char *err, size_t errlen);
long cpa_gz_read(void *h, unsigned char *buf, size_t len, char *err, size_t errlen);
void cpa_gz_close(void *h);

/// Writing gzip: cpa_gz_create opens `path` (created 0644, truncated) at `level` 1-9
/// (NULL with a message in err); cpa_gz_write compresses `len` bytes (0, or -1 with a
/// message); cpa_gz_finish flushes and closes (0, or -1 with a message).
void *cpa_gz_create(const char *path, int level, char *err, size_t errlen);
int cpa_gz_write(void *h, const unsigned char *buf, size_t len, char *err, size_t errlen);
int cpa_gz_finish(void *h, char *err, size_t errlen);

/// SIGINT, SIGTERM and SIGHUP write their number to a pipe instead of ending the process:
/// install returns the pipe's read end (-1 on failure; installing twice returns the same
/// pipe), take returns a pending signal's number or 0 (never blocks), remove puts the
/// previous handlers back and closes the pipe.
int cpa_signal_pipe_install(void);
int cpa_signal_pipe_take(void);
void cpa_signal_pipe_remove(void);

#endif

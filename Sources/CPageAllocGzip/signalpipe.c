#include "CPageAllocGzip.h"
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

// A recording must put the kernel's tracing state back when it is interrupted. The
// handler only writes the signal's number to a pipe (write is async-signal-safe); the
// recorder polls the pipe's other end between its steps and restores from normal code.

static int pipe_fds[2] = {-1, -1};
static struct sigaction old_int, old_term, old_hup;

static void on_signal(int sig) {
  int saved = errno;
  unsigned char b = (unsigned char)sig;
  if (pipe_fds[1] >= 0) (void)!write(pipe_fds[1], &b, 1);
  errno = saved;
}

int cpa_signal_pipe_install(void) {
  if (pipe_fds[0] >= 0) return pipe_fds[0];
  if (pipe2(pipe_fds, O_CLOEXEC | O_NONBLOCK) != 0) return -1;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, &old_int);
  sigaction(SIGTERM, &sa, &old_term);
  sigaction(SIGHUP, &sa, &old_hup);
  return pipe_fds[0];
}

int cpa_signal_pipe_take(void) {
  unsigned char b;
  if (pipe_fds[0] < 0) return 0;
  ssize_t n = read(pipe_fds[0], &b, 1);
  return n == 1 ? (int)b : 0;
}

void cpa_signal_pipe_remove(void) {
  if (pipe_fds[0] < 0) return;
  sigaction(SIGINT, &old_int, NULL);
  sigaction(SIGTERM, &old_term, NULL);
  sigaction(SIGHUP, &old_hup, NULL);
  close(pipe_fds[0]);
  close(pipe_fds[1]);
  pipe_fds[0] = pipe_fds[1] = -1;
}

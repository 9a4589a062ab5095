/*
 * bench/lean_spawn.ts's timer: runs each command as PostgreSQL runs archive_command and
 * restore_command, with the C library's system() (`/bin/sh -c`, started with posix_spawn by
 * glibc), and prints how long it took. Reads "<cwd>\t<shell command line>" lines, answers
 * "<milliseconds> <exit status>" lines.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(void) {
  char *line = NULL;
  size_t cap = 0;
  ssize_t n;
  setvbuf(stdout, NULL, _IOLBF, 0);
  while ((n = getline(&line, &cap, stdin)) > 0) {
    if (line[n - 1] == '\n') line[n - 1] = '\0';
    char *tab = strchr(line, '\t');
    if (!tab) return 2;
    *tab = '\0';
    if (chdir(line) != 0) {
      printf("0 127\n");
      continue;
    }
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    int status = system(tab + 1);
    clock_gettime(CLOCK_MONOTONIC, &b);
    int code = status == -1 ? -1 : WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    printf("%.3f %d\n", (b.tv_sec - a.tv_sec) * 1e3 + (b.tv_nsec - a.tv_nsec) / 1e6, code);
  }
  return 0;
}

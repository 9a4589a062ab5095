/*
 * pghoard_postgres_command's native front (built into dist/native/ by scripts/build_native.sh when
 * a C compiler is present). PostgreSQL starts restore_command through `/bin/sh -c` once per WAL
 * file; on a small VM `sh` plus bash alone take ~9 ms, more than a prefetched restore may cost. This
 * front answers exactly one case itself, the one on recovery's critical path: `--mode restore` of
 * a WAL or history file whose `<name>.pghoard.prefetch` the daemon already put next to %p. It
 * renames it to %p, as the Node.js client and upstream's client do. Every other call, and any
 * input it is not sure of, is handed unchanged (same arguments, same environment, plus the name it
 * was started as) to the bash client bin/pghoard_postgres_command, which holds the options,
 * messages and exit codes with the Node.js client behind it. It prints nothing itself.
 *
 * The checks mirror the bash client's fast path word for word, so both take the same cases.
 */
#define _GNU_SOURCE
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Relative to this binary's real directory (dist/native/ next to bin/, in every install). */
#define BASH_CLIENT "/../../bin/pghoard_postgres_command"

static char **saved_argv;

static int printable(const char *s) {
  for (; *s; s++)
    if (*s < '!' || *s > '~') return 0;
  return 1;
}

static int all_chars(const char *s, const char *allowed) {
  if (!*s) return 0;
  for (; *s; s++)
    if (!strchr(allowed, *s)) return 0;
  return 1;
}

static int upper_hex(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'A' && s[i] <= 'F'))) return 0;
  return 1;
}

/* The name the bash client would print for itself: $0, made absolute with the working directory. */
static void export_argv0(const char *arg0) {
  char found[PATH_MAX];
  const char *name = arg0;
  if (!strchr(arg0, '/')) {
    /* Started through PATH: the shell's search found it, and bash's $0 would be that path. */
    const char *path = getenv("PATH");
    name = NULL;
    while (path && !name) {
      const char *end = strchr(path, ':');
      size_t len = end ? (size_t)(end - path) : strlen(path);
      if (snprintf(found, sizeof found, "%.*s%s%s", (int)len, path, len ? "/" : "", arg0) < (int)sizeof found &&
          access(found, X_OK) == 0)
        name = found;
      path = end ? end + 1 : NULL;
    }
    if (!name) return; /* leave it to bash */
  }
  if (name[0] == '/') {
    setenv("PGHOARD_POSTGRES_COMMAND_ARGV0", name, 0);
    return;
  }
  char cwd[PATH_MAX], joined[PATH_MAX * 2];
  const char *pwd = getenv("PWD");
  struct stat a, b;
  /* bash keeps a valid inherited $PWD (the logical directory), else the physical one. */
  if (!(pwd && pwd[0] == '/' && stat(pwd, &a) == 0 && stat(".", &b) == 0 && a.st_dev == b.st_dev &&
        a.st_ino == b.st_ino)) {
    if (!getcwd(cwd, sizeof cwd)) return;
    pwd = cwd;
  }
  snprintf(joined, sizeof joined, "%s/%s", pwd, name);
  setenv("PGHOARD_POSTGRES_COMMAND_ARGV0", joined, 0);
}

static void hand_over(void) {
  char self[PATH_MAX], script[PATH_MAX + sizeof BASH_CLIENT];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n > 0) {
    self[n] = '\0';
    char *slash = strrchr(self, '/');
    if (slash) *slash = '\0';
    snprintf(script, sizeof script, "%s%s", self, BASH_CLIENT);
    export_argv0(saved_argv[0]);
    execv(script, saved_argv);
  }
  /* No bash client next to us: PostgreSQL must retry, not take a missing file for "not found". */
  fprintf(stderr, "%s: ERROR: cannot start the bash client %s\n", saved_argv[0], BASH_CLIENT + 7);
  exit(5);
}

int main(int argc, char **argv) {
  static const char *names[] = {"--host", "--port", "--username", "--password",
                                "--site", "--xlog", "--output",   "--mode"};
  const char *values[8] = {"127.0.0.1", "16000", "", "", "", "", "", ""};
  int given[8] = {0};
  saved_argv = argv;

  for (int i = 1; i < argc; i++) {
    const char *arg = argv[i], *value = NULL;
    int which = -1;
    for (int k = 0; k < 8 && which < 0; k++) {
      size_t len = strlen(names[k]);
      if (strncmp(arg, names[k], len) != 0) continue;
      if (arg[len] == '=') {
        which = k;
        value = arg + len + 1;
      } else if (arg[len] == '\0') {
        /* argparse reads a value starting with "-" as the next option: the Node client decides. */
        if (i + 1 >= argc || argv[i + 1][0] == '-') hand_over();
        which = k;
        value = argv[++i];
      }
    }
    if (which < 0) hand_over();
    values[which] = value;
    given[which] = 1;
  }
  const char *host = values[0], *port = values[1], *xlog = values[5], *output = values[6], *mode = values[7];
  if (strcmp(mode, "restore") != 0 || !given[4] || !given[5]) hand_over();
  for (int k = 2; k <= 5; k++)
    if (!printable(values[k])) hand_over();
  if (!all_chars(host, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")) hand_over();
  if (!all_chars(port, "0123456789") || strlen(port) > 5 || atoi(port) < 1 || atoi(port) > 65535) hand_over();
  if (!*output) hand_over(); /* no %p: a HEAD to the daemon */

  /* Paths that Node's path normalization would change go the bash (and Node) way. */
  size_t olen = strlen(output);
  char probe[PATH_MAX + 2];
  if (olen >= PATH_MAX) hand_over();
  snprintf(probe, sizeof probe, "/%s/", output);
  if (output[olen - 1] == '/' || strstr(output, "//") || strstr(probe, "/./") || strstr(probe, "/../")) hand_over();

  char target[PATH_MAX * 2];
  if (output[0] == '/') {
    snprintf(target, sizeof target, "%s", output);
  } else {
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof cwd)) hand_over();
    snprintf(target, sizeof target, "%s/%s", strcmp(cwd, "/") == 0 ? "" : cwd, output);
  }
  if (!printable(target)) hand_over();

  size_t xlen = strlen(xlog);
  int wal = xlen == 24 && upper_hex(xlog, 24);
  int history = xlen == 16 && upper_hex(xlog, 8) && strcmp(xlog + 8, ".history") == 0;
  if (!wal && !history) hand_over();

  char prefetch[PATH_MAX * 3];
  const char *slash = strrchr(target, '/');
  snprintf(prefetch, sizeof prefetch, "%.*s/%s.pghoard.prefetch", (int)(slash - target), target, xlog);
  struct stat st;
  if (stat(prefetch, &st) != 0) hand_over(); /* not prefetched: the daemon fetches it */
  if (rename(prefetch, target) != 0) hand_over();
  return 0;
}

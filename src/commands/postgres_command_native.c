/*
 * pghoard_postgres_command's native front (built into dist/native/ by scripts/build_native.sh when
 * a C compiler is present). PostgreSQL starts archive_command and restore_command through
 * `/bin/sh -c` once per WAL file; on a small VM `sh` plus bash alone take ~9 ms, more than a
 * prefetched restore may cost. This front makes the bash client's common calls itself, with the
 * same checks, requests, messages and exit codes: archive and restore through the daemon (one
 * HTTP/1.1 request to a numeric IPv4 address) and the rename of a prefetched
 * `<name>.pghoard.prefetch` next to %p (as the Node.js client and upstream's client do). Every
 * other call, and any input or answer it is not sure of, is handed unchanged (same arguments, same
 * environment, plus the name it was started as) to the bash client bin/pghoard_postgres_command,
 * which hands its own unusual cases to the Node.js client, where the options, messages and exit
 * codes are defined. It prints only what the bash client would print, and hands over before it
 * has printed anything.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
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

/*
 * The name the bash client prints for itself: its $0 (the path the shell found it by), made
 * absolute with the working directory. False when it cannot be told (then bash works it out).
 */
static int own_name(const char *arg0, char *out, size_t size) {
  char found[PATH_MAX];
  const char *given = getenv("PGHOARD_POSTGRES_COMMAND_ARGV0");
  const char *name = given && *given ? given : arg0;
  if (name == arg0 && !strchr(arg0, '/')) {
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
    if (!name) return 0;
  }
  if (name[0] == '/') return snprintf(out, size, "%s", name) < (int)size;
  char cwd[PATH_MAX];
  const char *pwd = getenv("PWD");
  struct stat a, b;
  /* bash keeps a valid inherited $PWD (the logical directory), else the physical one. */
  if (!(pwd && pwd[0] == '/' && stat(pwd, &a) == 0 && stat(".", &b) == 0 && a.st_dev == b.st_dev &&
        a.st_ino == b.st_ino)) {
    if (!getcwd(cwd, sizeof cwd)) return 0;
    pwd = cwd;
  }
  return snprintf(out, size, "%s/%s", pwd, name) < (int)size;
}

static void hand_over(void) {
  char self[PATH_MAX], script[PATH_MAX + sizeof BASH_CLIENT];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n > 0) {
    self[n] = '\0';
    char *slash = strrchr(self, '/');
    if (slash) *slash = '\0';
    snprintf(script, sizeof script, "%s%s", self, BASH_CLIENT);
    char name[PATH_MAX * 2];
    const char *given = getenv("PGHOARD_POSTGRES_COMMAND_ARGV0");
    if (!(given && *given) && own_name(saved_argv[0], name, sizeof name))
      setenv("PGHOARD_POSTGRES_COMMAND_ARGV0", name, 1);
    execv(script, saved_argv);
  }
  /* No bash client next to us: PostgreSQL must retry, not take a missing file for "not found". */
  fprintf(stderr, "%s: ERROR: cannot start the bash client %s\n", saved_argv[0], BASH_CLIENT + 7);
  exit(5);
}

/* Base64 of printable ASCII (Basic auth). */
static void base64(const char *in, char *out) {
  static const char chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  size_t n = strlen(in), o = 0;
  for (size_t i = 0; i < n; i += 3) {
    unsigned a = (unsigned char)in[i], b = i + 1 < n ? (unsigned char)in[i + 1] : 0;
    unsigned c = i + 2 < n ? (unsigned char)in[i + 2] : 0;
    out[o++] = chars[a >> 2];
    out[o++] = chars[((a & 3) << 4) | (b >> 4)];
    out[o++] = i + 1 < n ? chars[((b & 15) << 2) | (c >> 6)] : '=';
    out[o++] = i + 2 < n ? chars[c & 63] : '=';
  }
  out[o] = '\0';
}

static int status_code;
static char body[4200];

/*
 * One HTTP/1.1 request, as the bash client's request(): sets status_code and body (the daemon's
 * reason, whitespace collapsed). 2: the daemon could not be reached; 1: no proper answer.
 */
static int request(const char *method, const char *host, int port, const char *site, const char *xlog,
                   const char *target, const char *extra, const char *username, const char *password) {
  struct sockaddr_in addr;
  memset(&addr, 0, sizeof addr);
  addr.sin_family = AF_INET;
  addr.sin_port = htons((unsigned short)port);
  if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) return 1; /* a host name: bash resolves it */
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return 2;
  if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
    close(fd);
    return 2;
  }
  static char head[3 * PATH_MAX + 8192];
  int len = snprintf(head, sizeof head,
                     "%s /%s/archive/%s HTTP/1.1\r\nHost: %s:%d\r\nContent-Length: 0\r\nConnection: close\r\n",
                     method, site, xlog, host, port);
  if (*target) len += snprintf(head + len, sizeof head - len, "x-pghoard-target-path: %s\r\n", target);
  if (*extra) len += snprintf(head + len, sizeof head - len, "%s\r\n", extra);
  if (*username && *password) {
    char pair[2048], encoded[2800];
    if (snprintf(pair, sizeof pair, "%s:%s", username, password) >= (int)sizeof pair) {
      close(fd);
      return 1;
    }
    base64(pair, encoded);
    len += snprintf(head + len, sizeof head - len, "Authorization: Basic %s\r\n", encoded);
  }
  len += snprintf(head + len, sizeof head - len, "\r\n");
  if (len >= (int)sizeof head) {
    close(fd);
    return 1;
  }
  for (int sent = 0; sent < len;) {
    /* No SIGPIPE if the daemon closed early: a failed send is handed over like any bad answer. */
    ssize_t w = send(fd, head + sent, len - sent, MSG_NOSIGNAL);
    if (w <= 0) {
      close(fd);
      return 1;
    }
    sent += (int)w;
  }
  /* The whole answer (the daemon closes after it), at most 64 KiB as bash reads it. */
  static char resp[65537];
  size_t got = 0;
  for (;;) {
    ssize_t r = read(fd, resp + got, 65536 - got);
    if (r <= 0) break;
    got += (size_t)r;
    if (got == 65536) break;
  }
  close(fd);
  resp[got] = '\0';
  if (memchr(resp, '\0', got)) return 1; /* bash would drop NUL bytes: let it judge */
  char *nl = strchr(resp, '\n');
  if (!nl) return 1;
  /* Status line: HTTP/d.d NNN followed by a space or a CR ending the line. */
  if (strncmp(resp, "HTTP/", 5) != 0 || !(resp[5] >= '0' && resp[5] <= '9') || resp[6] != '.' ||
      !(resp[7] >= '0' && resp[7] <= '9') || resp[8] != ' ')
    return 1;
  for (int k = 9; k < 12; k++)
    if (!(resp[k] >= '0' && resp[k] <= '9')) return 1;
  if (!(resp[12] == ' ' || (resp[12] == '\r' && resp + 13 == nl))) return 1;
  status_code = (resp[9] - '0') * 100 + (resp[10] - '0') * 10 + (resp[11] - '0');
  if (status_code < 100) return 1;
  /* Header lines up to the empty one; a last line without its newline ends them (no body then). */
  char *rest = nl + 1;
  long length = -1;
  int ended = 0;
  while ((nl = strchr(rest, '\n'))) {
    char *line = rest;
    rest = nl + 1;
    char *end = nl;
    if (end > line && end[-1] == '\r') end--;
    if (end == line) {
      ended = 1;
      break;
    }
    if ((size_t)(end - line) > 15 && strncasecmp(line, "content-length:", 15) == 0) {
      char *p = line + 15;
      while (p < end && *p == ' ') p++;
      if (p < end && *p >= '0' && *p <= '9') {
        length = 0;
        while (p < end && *p >= '0' && *p <= '9' && length < 100000000) length = length * 10 + (*p++ - '0');
      }
    }
  }
  if (!ended) rest = resp + got;
  body[0] = '\0';
  if (strcmp(method, "HEAD") != 0 && length > 0) {
    if (length > 4096) length = 4096;
    if ((long)strlen(rest) < length) return 1;
    size_t o = 0;
    int space = 0;
    for (long k = 0; k < length; k++) {
      unsigned char ch = (unsigned char)rest[k];
      /* bash splits words on these three and treats \r \f \v as lone separators: left to it. */
      int blank = ch == ' ' || ch == '\t' || ch == '\n';
      if (!blank && (ch < 0x20 || ch > 0x7e)) return 1;
      if (blank) {
        space = o > 0;
      } else {
        if (space) body[o++] = ' ';
        space = 0;
        body[o++] = (char)ch;
      }
    }
    body[o] = '\0';
  }
  return 0;
}

/* The daemon's reason as the clients append it. */
static void print_failure(const char *argv0, const char *what, int code) {
  if (strlen(body) > 300)
    printf("%s: ERROR: %s failed with HTTP status %d: %.300s\xe2\x80\xa6\n", argv0, what, status_code, body);
  else if (*body)
    printf("%s: ERROR: %s failed with HTTP status %d: %s\n", argv0, what, status_code, body);
  else
    printf("%s: ERROR: %s failed with HTTP status %d\n", argv0, what, status_code);
  exit(code);
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
  const char *host = values[0], *port = values[1], *username = values[2], *password = values[3];
  const char *site = values[4], *xlog = values[5], *output = values[6], *mode = values[7];
  int archive = strcmp(mode, "archive") == 0;
  if ((!archive && strcmp(mode, "restore") != 0) || !given[4] || !given[5]) hand_over();
  for (int k = 2; k <= 5; k++)
    if (!printable(values[k])) hand_over();
  if (!all_chars(host, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")) hand_over();
  if (!all_chars(port, "0123456789") || strlen(port) > 5 || atoi(port) < 1 || atoi(port) > 65535) hand_over();
  int port_number = atoi(port);
  char argv0[PATH_MAX * 2];
  if (!own_name(argv[0], argv0, sizeof argv0)) hand_over();

  if (archive) {
    size_t n = strlen(xlog);
    if (n >= 7 && strcmp(xlog + n - 7, ".backup") == 0) {
      printf("Ignoring request to archive backup label '%s': PGHoard does not use them\n", xlog);
      return 0;
    }
    if (request("PUT", host, port_number, site, xlog, "", "", username, password) != 0) hand_over();
    if (status_code == 201) return 0;
    print_failure(argv0, "Archival", 3);
  }

  const char *method = "HEAD";
  char target[PATH_MAX * 2] = "";
  if (*output) {
    /* Paths that Node's path normalization would change go the bash (and Node) way. */
    size_t olen = strlen(output);
    char probe[PATH_MAX + 2];
    if (olen >= PATH_MAX) hand_over();
    snprintf(probe, sizeof probe, "/%s/", output);
    if (output[olen - 1] == '/' || strstr(output, "//") || strstr(probe, "/./") || strstr(probe, "/../"))
      hand_over();
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
    if (wal || history) {
      char prefetch[PATH_MAX * 3];
      const char *slash = strrchr(target, '/');
      snprintf(prefetch, sizeof prefetch, "%.*s/%s.pghoard.prefetch", (int)(slash - target), target, xlog);
      struct stat st;
      if (stat(prefetch, &st) == 0) {
        /* The daemon checked it before naming it so; the Node.js client renames it likewise. */
        if (rename(prefetch, target) == 0) return 0;
        hand_over();
      }
    }
    method = "GET";
  }
  if (request(method, host, port_number, site, xlog, target, "", username, password) != 0) hand_over();
  if (status_code == 201 && *target) return 0;
  if (status_code == 200 && !*target) return 0;
  if (status_code == 404 && strncmp(body, "Site: ", 6) != 0) {
    printf("%s: ERROR: '%s' not found from archive\n", argv0, xlog);
    return 4;
  }
  if (status_code == 404) hand_over();
  print_failure(argv0, "Restore", 5);
  return 5;
}

/*
 * Native half of the snappy framing (snappy.ts). Decoding: one framed chunk decompressed with
 * libsnappy straight into the caller's output piece, its masked CRC-32C checked there, in one
 * call. Encoding: a run of 64 KiB blocks compressed and framed straight into one output buffer.
 * The npm `snappy` package returns each block as a new buffer (copied out of a Rust vector), which
 * then has to be copied again and checksummed in a second call: on a restore that was a tenth of
 * the decoding thread's time. (Warm, both compress a WAL segment equally fast; a fresh thread's
 * first segments took the npm package about twice as long.)
 *
 * Built by scripts/build_native.sh where a C compiler, libsnappy's C header and Node.js's
 * headers are present; without it snappy.ts keeps the npm packages. Everything here is
 * bounds-checked against the typed arrays' real lengths: a bad argument is an error code, never a
 * read or write outside them.
 *
 * Two process helpers live here too, so that a pghoard process loads one addon
 * (src/common/native_addon.ts gives them their TypeScript side): tuneAllocator (glibc malloc
 * thresholds) and writeFileDurable (a small file written and fsync'd in one thread-pool trip).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <node_api.h>
#include <snappy-c.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

/* decodeChunk results besides a length: what snappy.ts reports. */
#define BAD_DATA (-1)
#define TOO_LARGE (-2)
#define CRC_MISMATCH (-3)
#define BAD_ARGUMENTS (-4)

#define MAX_BLOCK 65536

static uint32_t crc_table[256];
static bool crc_hardware;

static void crc_init(void) {
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0x82f63b78u : c >> 1;
    crc_table[i] = c;
  }
#if defined(__x86_64__)
  crc_hardware = __builtin_cpu_supports("sse4.2");
#endif
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static uint32_t crc32c_sse42(const uint8_t *p, size_t n) {
  uint64_t c = 0xffffffffu;
  for (; n >= 8; p += 8, n -= 8) {
    uint64_t v;
    memcpy(&v, p, 8);
    c = _mm_crc32_u64(c, v);
  }
  uint32_t c32 = (uint32_t)c;
  while (n--) c32 = _mm_crc32_u8(c32, *p++);
  return c32 ^ 0xffffffffu;
}
#endif

static uint32_t crc32c(const uint8_t *p, size_t n) {
#if defined(__x86_64__)
  if (crc_hardware) return crc32c_sse42(p, n);
#endif
  uint32_t c = 0xffffffffu;
  while (n--) c = crc_table[(c ^ *p++) & 0xff] ^ (c >> 8);
  return c ^ 0xffffffffu;
}

/* The framing format's mask (framing_format.txt, "Checksum format"). */
static uint32_t masked(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + 0xa282ead8u; }

static bool uint8_view(napi_env env, napi_value value, uint8_t **data, size_t *length) {
  napi_typedarray_type type;
  napi_value arraybuffer;
  size_t offset;
  return napi_get_typedarray_info(env, value, &type, length, (void **)data, &arraybuffer, &offset) == napi_ok &&
         type == napi_uint8_array;
}

/* The arguments both calls start with, (src, start, end, dst, dstOffset), checked against the arrays. */
struct ranges {
  uint8_t *src, *dst;
  size_t src_length, dst_length;
  uint32_t start, end, dst_offset;
};

static bool get_ranges(napi_env env, napi_value *argv, struct ranges *r) {
  return uint8_view(env, argv[0], &r->src, &r->src_length) && uint8_view(env, argv[3], &r->dst, &r->dst_length) &&
         napi_get_value_uint32(env, argv[1], &r->start) == napi_ok &&
         napi_get_value_uint32(env, argv[2], &r->end) == napi_ok &&
         napi_get_value_uint32(env, argv[4], &r->dst_offset) == napi_ok && r->start <= r->end &&
         r->end <= r->src_length && r->dst_offset <= r->dst_length;
}

static napi_value int_result(napi_env env, int32_t result) {
  napi_value out;
  napi_create_int32(env, result, &out);
  return out;
}

/*
 * decodeChunk(src, start, end, dst, dstOffset, expectedMaskedCrc, compressed): the chunk body
 * after its CRC, src[start, end), decoded into dst at dstOffset. Returns the decoded length, or
 * BAD_DATA, TOO_LARGE (more than 65536 bytes or more than dst has room for), CRC_MISMATCH or
 * BAD_ARGUMENTS.
 */
static napi_value decode_chunk(napi_env env, napi_callback_info info) {
  size_t argc = 7;
  napi_value argv[7];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 7) return int_result(env, BAD_ARGUMENTS);
  struct ranges r;
  uint32_t expected;
  bool compressed;
  if (!get_ranges(env, argv, &r) || napi_get_value_uint32(env, argv[5], &expected) != napi_ok ||
      napi_get_value_bool(env, argv[6], &compressed) != napi_ok)
    return int_result(env, BAD_ARGUMENTS);
  uint8_t *src = r.src, *dst = r.dst;
  uint32_t start = r.start, end = r.end, dst_offset = r.dst_offset;
  size_t dst_length = r.dst_length;
  size_t room = dst_length - dst_offset;
  if (room > MAX_BLOCK) room = MAX_BLOCK;
  size_t n = end - start;
  if (compressed) {
    size_t declared;
    if (snappy_uncompressed_length((const char *)src + start, n, &declared) != SNAPPY_OK) return int_result(env, BAD_DATA);
    if (declared > room) return int_result(env, TOO_LARGE);
    n = declared;
    if (snappy_uncompress((const char *)src + start, end - start, (char *)dst + dst_offset, &n) != SNAPPY_OK)
      return int_result(env, BAD_DATA);
  } else {
    if (n > room) return int_result(env, TOO_LARGE);
    memcpy(dst + dst_offset, src + start, n);
  }
  if (masked(crc32c(dst + dst_offset, n)) != expected) return int_result(env, CRC_MISMATCH);
  return int_result(env, (int32_t)n);
}

/*
 * encodeChunks(src, start, end, dst, dstOffset): src[start, end) cut into 64 KiB blocks from its
 * start, each written to dst from dstOffset on as one framed data chunk (type, 3-byte length,
 * masked CRC-32C of the block, payload), compressed unless that saves less than 1/8 of the block,
 * as upstream's python-snappy writes them. libsnappy compresses exactly as the npm package does,
 * so the bytes are the same either way. dst must hold encodeBound(end - start) bytes from
 * dstOffset. Returns the bytes written, or BAD_ARGUMENTS / TOO_LARGE (dst too small).
 */
static size_t chunk_bound(void) { return 8 + snappy_max_compressed_length(MAX_BLOCK); }

static napi_value encode_chunks(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 5) return int_result(env, BAD_ARGUMENTS);
  struct ranges r;
  if (!get_ranges(env, argv, &r)) return int_result(env, BAD_ARGUMENTS);
  const uint8_t *src = r.src;
  uint8_t *dst = r.dst;
  uint32_t start = r.start, end = r.end, dst_offset = r.dst_offset;
  size_t dst_length = r.dst_length;
  size_t blocks = (end - start + MAX_BLOCK - 1) / MAX_BLOCK;
  if (dst_length - dst_offset < blocks * chunk_bound() || blocks * chunk_bound() > INT32_MAX) return int_result(env, TOO_LARGE);
  uint8_t *out = dst + dst_offset;
  for (size_t at = start; at < end; at += MAX_BLOCK) {
    size_t length = end - at < MAX_BLOCK ? end - at : MAX_BLOCK;
    const uint8_t *block = src + at;
    uint32_t crc = masked(crc32c(block, length));
    size_t compressed = chunk_bound() - 8;
    uint8_t type = 0x00;
    if (snappy_compress((const char *)block, length, (char *)out + 8, &compressed) != SNAPPY_OK ||
        compressed >= length - (length >> 3)) {
      type = 0x01;
      memcpy(out + 8, block, length);
      compressed = length;
    }
    size_t chunk_length = compressed + 4;
    out[0] = type;
    out[1] = chunk_length & 0xff;
    out[2] = (chunk_length >> 8) & 0xff;
    out[3] = (chunk_length >> 16) & 0xff;
    out[4] = crc & 0xff;
    out[5] = (crc >> 8) & 0xff;
    out[6] = (crc >> 16) & 0xff;
    out[7] = (crc >> 24) & 0xff;
    out += 8 + compressed;
  }
  return int_result(env, (int32_t)(out - (dst + dst_offset)));
}

/* encodeBound(n): the most bytes encodeChunks writes for n bytes of input. */
static napi_value encode_bound(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  uint32_t n;
  napi_value out;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 1 ||
      napi_get_value_uint32(env, argv[0], &n) != napi_ok) {
    napi_throw_type_error(env, NULL, "encodeBound expects a length");
    return NULL;
  }
  napi_create_double(env, (double)(((size_t)n + MAX_BLOCK - 1) / MAX_BLOCK) * (double)chunk_bound(), &out);
  return out;
}

/* maskedCrc32c(data): the framing format's checksum of data. */
static napi_value masked_crc32c(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  uint8_t *data;
  size_t length;
  napi_value out;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 1 || !uint8_view(env, argv[0], &data, &length)) {
    napi_throw_type_error(env, NULL, "maskedCrc32c expects a Uint8Array");
    return NULL;
  }
  napi_create_uint32(env, masked(crc32c(data, length)), &out);
  return out;
}

/*
 * tuneAllocator(mmapThreshold, trimThreshold): fixes glibc malloc's mmap and trim thresholds for
 * the whole process (src/common/native_addon.ts says why); false where malloc is not glibc's or
 * it refused a value. Not codec work, but this is the one addon a pghoard process loads.
 */
static napi_value tune_allocator(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  int64_t mmap_threshold, trim_threshold;
  bool ok = false;
  napi_value out;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 2 ||
      napi_get_value_int64(env, argv[0], &mmap_threshold) != napi_ok ||
      napi_get_value_int64(env, argv[1], &trim_threshold) != napi_ok || mmap_threshold <= 0 ||
      mmap_threshold > INT_MAX || trim_threshold <= 0 || trim_threshold > INT_MAX) {
    napi_throw_type_error(env, NULL, "tuneAllocator expects two positive byte counts");
    return NULL;
  }
#if defined(__GLIBC__)
  ok = mallopt(M_MMAP_THRESHOLD, (int)mmap_threshold) == 1 && mallopt(M_TRIM_THRESHOLD, (int)trim_threshold) == 1;
#endif
  napi_get_boolean(env, ok, &out);
  return out;
}

/*
 * writeFileDurable(path, data, flags, mode, mtime) -> Promise: a whole small file in one trip to
 * the thread pool: open (0600), write, fchmod (mode >= 0), futimens (mtime not NaN, seconds), fsync,
 * close. Through Node's fs that is five trips, each waking a pool thread and then the JS thread;
 * on this kind of VM those wake-ups cost more CPU than the file itself (src/restore/target.ts).
 * A failure rejects with an Error carrying `errno` (negative, as Node's) and `syscall`. `data` is
 * read from the pool thread: the caller must not change or transfer it until the promise settles.
 */
typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  napi_ref data_ref;
  char *path;
  const uint8_t *data;
  size_t length;
  int flags;
  int64_t mode;
  double mtime;
  int err;
  const char *syscall;
} write_job;

static void write_execute(napi_env env, void *arg) {
  (void)env;
  write_job *job = arg;
  int fd = open(job->path, job->flags | O_CLOEXEC, 0600);
  if (fd < 0) {
    job->err = errno;
    job->syscall = "open";
    return;
  }
  size_t done = 0;
  while (done < job->length && job->err == 0) {
    ssize_t n = write(fd, job->data + done, job->length - done);
    if (n >= 0) done += (size_t)n;
    else if (errno != EINTR) job->err = errno, job->syscall = "write";
  }
  if (job->err == 0 && job->mode >= 0 && fchmod(fd, (mode_t)job->mode) != 0) job->err = errno, job->syscall = "fchmod";
  if (job->err == 0 && !isnan(job->mtime)) {
    struct timespec times[2];
    times[0].tv_sec = (time_t)floor(job->mtime);
    times[0].tv_nsec = (long)((job->mtime - floor(job->mtime)) * 1e9);
    times[1] = times[0];
    if (futimens(fd, times) != 0) job->err = errno, job->syscall = "futime";
  }
  if (job->err == 0 && fsync(fd) != 0) job->err = errno, job->syscall = "fsync";
  if (close(fd) != 0 && job->err == 0) job->err = errno, job->syscall = "close";
}

static void write_complete(napi_env env, napi_status status, void *arg) {
  write_job *job = arg;
  napi_value result;
  if (status == napi_ok && job->err == 0) {
    napi_get_undefined(env, &result);
    napi_resolve_deferred(env, job->deferred, result);
  } else {
    napi_value message, value;
    const char *text = status == napi_ok ? strerror(job->err) : "write cancelled";
    napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &message);
    napi_create_error(env, NULL, message, &result);
    napi_create_int32(env, -(status == napi_ok ? job->err : ECANCELED), &value);
    napi_set_named_property(env, result, "errno", value);
    napi_create_string_utf8(env, job->syscall ? job->syscall : "write", NAPI_AUTO_LENGTH, &value);
    napi_set_named_property(env, result, "syscall", value);
    napi_reject_deferred(env, job->deferred, result);
  }
  napi_delete_reference(env, job->data_ref);
  napi_delete_async_work(env, job->work);
  free(job->path);
  free(job);
}

static napi_value write_file_durable(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5], promise, name;
  size_t path_length;
  int32_t flags;
  write_job *job = calloc(1, sizeof(write_job));
  uint8_t *data = NULL;
  if (job == NULL || napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 5 ||
      napi_get_value_string_utf8(env, argv[0], NULL, 0, &path_length) != napi_ok ||
      !uint8_view(env, argv[1], &data, &job->length) || napi_get_value_int32(env, argv[2], &flags) != napi_ok ||
      napi_get_value_int64(env, argv[3], &job->mode) != napi_ok ||
      napi_get_value_double(env, argv[4], &job->mtime) != napi_ok || (job->path = malloc(path_length + 1)) == NULL) {
    if (job) free(job->path);
    free(job);
    napi_throw_type_error(env, NULL, "writeFileDurable expects (path, Uint8Array, flags, mode, mtime)");
    return NULL;
  }
  napi_get_value_string_utf8(env, argv[0], job->path, path_length + 1, &path_length);
  job->data = data;
  job->flags = flags;
  napi_create_reference(env, argv[1], 1, &job->data_ref);
  napi_create_promise(env, &job->deferred, &promise);
  napi_create_string_utf8(env, "pghoard:writeFileDurable", NAPI_AUTO_LENGTH, &name);
  napi_create_async_work(env, NULL, name, write_execute, write_complete, job, &job->work);
  napi_queue_async_work(env, job->work);
  return promise;
}

NAPI_MODULE_INIT() {
  crc_init();
  napi_value fn;
  napi_create_function(env, "decodeChunk", NAPI_AUTO_LENGTH, decode_chunk, NULL, &fn);
  napi_set_named_property(env, exports, "decodeChunk", fn);
  napi_create_function(env, "encodeChunks", NAPI_AUTO_LENGTH, encode_chunks, NULL, &fn);
  napi_set_named_property(env, exports, "encodeChunks", fn);
  napi_create_function(env, "encodeBound", NAPI_AUTO_LENGTH, encode_bound, NULL, &fn);
  napi_set_named_property(env, exports, "encodeBound", fn);
  napi_create_function(env, "maskedCrc32c", NAPI_AUTO_LENGTH, masked_crc32c, NULL, &fn);
  napi_set_named_property(env, exports, "maskedCrc32c", fn);
  napi_create_function(env, "tuneAllocator", NAPI_AUTO_LENGTH, tune_allocator, NULL, &fn);
  napi_set_named_property(env, exports, "tuneAllocator", fn);
  napi_create_function(env, "writeFileDurable", NAPI_AUTO_LENGTH, write_file_durable, NULL, &fn);
  napi_set_named_property(env, exports, "writeFileDurable", fn);
  return exports;
}

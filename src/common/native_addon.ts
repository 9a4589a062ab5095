/**
 * The optional native addon (src/fileformat/snappy_native.c, built into dist/native by
 * scripts/build_native.sh): null where it was not built or cannot be loaded (libsnappy missing).
 * fileformat/snappy_native.ts gives its codec half a type; tuneAllocator() and writeFileDurable
 * are its process and file halves.
 */
import { createRequire } from "node:module";
import { getSystemErrorName } from "node:util";

function load(): Record<string, unknown> | null {
  try {
    return createRequire(import.meta.url)("../../native/snappy_native.node") as Record<string, unknown>;
  } catch {
    return null;
  }
}

export const nativeAddon: Record<string, unknown> | null = load();

/**
 * glibc's defaults hand memory back to the kernel too eagerly for a process that streams through
 * 1–16 MiB buffers: a freed block above the (dynamic) mmap threshold is unmapped, and a heap top
 * beyond 128 KiB is trimmed, so the next buffer faults its pages in afresh. On this kind of VM a
 * page fault costs ~12 µs (2 MiB of AES output: 4.7 ms fresh against 0.47 ms in reused memory);
 * decoding 192 MiB of snappy took 11 500-18 000 faults and 275-470 ms of CPU, with these
 * thresholds about 5 000 and 180-230 ms. Blocks up to 32 MiB (a WAL segment and its output) then
 * come from the heap, and up to 128 MiB of free heap top stays mapped per arena, a bounded cost in
 * resident memory. systemd/pghoard.service sets the same values in the environment.
 */
export const MALLOC_MMAP_THRESHOLD = 32 * 1024 * 1024;
export const MALLOC_TRIM_THRESHOLD = 128 * 1024 * 1024;

/**
 * Applies the malloc thresholds above to this process, unless the environment sets malloc
 * tunables itself (GLIBC_TUNABLES, MALLOC_*_): the operator's choice wins. True when applied.
 */
export function tuneAllocator(env: NodeJS.ProcessEnv = process.env): boolean {
  if (env.GLIBC_TUNABLES?.includes("glibc.malloc.")) return false;
  if (Object.keys(env).some((name) => name.startsWith("MALLOC_") && name.endsWith("_"))) return false;
  const tune = nativeAddon?.tuneAllocator;
  if (typeof tune !== "function") return false;
  return (tune as (mmapThreshold: number, trimThreshold: number) => boolean)(
    MALLOC_MMAP_THRESHOLD,
    MALLOC_TRIM_THRESHOLD,
  );
}

/** What writeFileDurable does besides writing: fchmod to `mode`, futimens to `mtime` (seconds). */
export interface DurableWriteOptions {
  mode?: number;
  mtime?: number;
}

export type WriteFileDurable = (
  path: string,
  data: Uint8Array,
  flags: number,
  options?: DurableWriteOptions,
) => Promise<void>;

type RawWriteFileDurable = (
  path: string,
  data: Uint8Array,
  flags: number,
  mode: number,
  mtime: number,
) => Promise<void>;

function wrapWriteFileDurable(raw: RawWriteFileDurable): WriteFileDurable {
  return async (path, data, flags, options = {}) => {
    try {
      await raw(path, data, flags, options.mode ?? -1, options.mtime ?? NaN);
    } catch (err) {
      // An error like Node's own (code, errno, syscall, path), so callers handle both alike.
      const { errno, syscall, message } = err as { errno?: number; syscall?: string; message: string };
      const code = typeof errno === "number" && errno < 0 ? getSystemErrorName(errno) : "EIO";
      throw Object.assign(new Error(`${code}: ${message}, ${syscall ?? "write"} '${path}'`), {
        code,
        errno,
        syscall,
        path,
      });
    }
  };
}

/**
 * A whole file in one trip to libuv's thread pool: open with `flags` (mode 0600), write `data`,
 * then fchmod and futimens when asked, fsync, close. null without the addon. Node's fs takes a
 * trip per call, each waking a pool thread and then the calling thread; for a restore's many small
 * files those wake-ups cost more than the writes (restore A/B: 7 % less CPU, 8-10 % less time).
 */
export const writeFileDurable: WriteFileDurable | null =
  typeof nativeAddon?.writeFileDurable === "function"
    ? wrapWriteFileDurable(nativeAddon.writeFileDurable as RawWriteFileDurable)
    : null;

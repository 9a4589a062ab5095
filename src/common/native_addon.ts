/**
 * The optional native addon (src/fileformat/snappy_native.c, built into dist/native by
 * scripts/build_native.sh): null where it was not built or cannot be loaded (libsnappy missing).
 * fileformat/snappy_native.ts gives its codec half a type; tuneAllocator() is its process half.
 */
import { createRequire } from "node:module";

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
 * 1 MiB buffers: a freed block above the (dynamic) mmap threshold is unmapped, and a heap top
 * beyond 128 KiB is trimmed, so the next buffer faults its pages in afresh. On this kind of VM a
 * page fault costs ~12 µs (2 MiB of AES output: 4.7 ms fresh against 0.47 ms in reused memory);
 * decoding 480 MiB of snappy took 22 000 faults and 550 ms of CPU, with these values 1 000 and
 * 230 ms. Blocks up to 4 MiB then come from the heap, and up to 32 MiB of free heap top stays
 * mapped per arena (a bounded cost in resident memory).
 */
export const MALLOC_MMAP_THRESHOLD = 4 * 1024 * 1024;
export const MALLOC_TRIM_THRESHOLD = 32 * 1024 * 1024;

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

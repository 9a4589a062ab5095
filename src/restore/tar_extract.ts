/**
 * Streaming tar extraction (ustar, pax, GNU long names) into a RestoreTarget, applying
 * upstream's member rules for pghoard formats: skip `.pghoard_tar_metadata.json` (and
 * `.manifest.json` for delta), strip `pgdata/`, map `tablespaces/<name>/` to the tablespace
 * directory. Regular files, directories and symlinks are supported; anything else (hard links,
 * devices, FIFOs) stops the restore, as upstream's pghoard_gnutaremu does.
 */
import { Writable } from "node:stream";
import tarStream from "tar-stream";

import { BASEBACKUP_FORMATS } from "../catalog/metadata.js";
import { RestoreError } from "./errors.js";
import { SMALL_FILE_BYTES, type RestoreTarget } from "./target.js";

/** Small files of one archive written concurrently (see SMALL_FILE_BYTES). */
const MAX_BACKGROUND_WRITES = 16;

/** The per-member data stream tar-stream hands out (its d.ts does not export the type). */
type EntryStream = AsyncIterable<Uint8Array> & { resume(): unknown };

export { BASEBACKUP_FORMATS };

export interface TarRules {
  /** Apply the pghoard-format rules (exclude metadata members, strip `pgdata/`, map tablespaces). */
  pghoardFormat: boolean;
  /** Member names excluded when any path component equals one of them. */
  excludeNames: string[];
}

/** Rules for an object by its own `format` metadata (upstream `_build_tar_args`). */
export function tarRulesForFormat(format: string | undefined): TarRules {
  if (!format) return { pghoardFormat: false, excludeNames: [] };
  if (!(BASEBACKUP_FORMATS as readonly string[]).includes(format)) {
    throw new RestoreError(`Unrecognized basebackup format '${format}'`);
  }
  const excludeNames = [".pghoard_tar_metadata.json"];
  if (format.startsWith("pghoard-delta-")) excludeNames.push(".manifest.json");
  return { pghoardFormat: true, excludeNames };
}

/** Maps an archive member name to a `$PGDATA`-relative or absolute tablespace path; null = skip. */
export function mapMemberName(name: string, rules: TarRules, target: RestoreTarget): string | null {
  let mapped = name.endsWith("/") ? name.replace(/\/+$/, "") : name;
  if (!rules.pghoardFormat) return mapped;
  const components = mapped.split("/");
  if (components.some((c) => rules.excludeNames.includes(c))) return null;
  if (mapped === "pgdata") return null;
  if (mapped.startsWith("pgdata/")) mapped = mapped.slice("pgdata/".length);
  if (mapped === "tablespaces") return null;
  if (mapped.startsWith("tablespaces/")) {
    for (const ts of target.tablespaces) {
      const prefix = `tablespaces/${ts.name}`;
      if (mapped === prefix) return null; // the tablespace root itself already exists
      if (mapped.startsWith(prefix + "/")) return ts.path + "/" + mapped.slice(prefix.length + 1);
    }
  }
  return mapped;
}

function memberMtime(header: tarStream.Header): number | undefined {
  const pax = header.pax as Record<string, string> | null | undefined;
  if (pax?.mtime !== undefined) {
    const value = Number(pax.mtime);
    if (Number.isFinite(value)) return value;
  }
  return header.mtime ? header.mtime.getTime() / 1000 : undefined;
}

export interface ExtractResult {
  /** Tar bytes consumed (the decoded size of the object). */
  bytes: number;
  members: number;
}

/**
 * A Writable that extracts the tar written into it. `result` resolves after the archive ended
 * cleanly (tar-stream reports a truncated member as "Unexpected end of data").
 */
export function createTarExtractor(
  target: RestoreTarget,
  rules: TarRules,
  context: string,
): { sink: Writable; result: () => ExtractResult } {
  const extract = tarStream.extract();
  let members = 0;
  let bytes = 0;
  const background = new Map<string, Promise<void>>();
  let backgroundError: unknown;

  /** Waits for room (and for an earlier write of the same path) before starting another background write. */
  async function makeRoom(absolute: string): Promise<void> {
    // The same path twice in one archive: let the earlier write finish first.
    await background.get(absolute);
    while (background.size >= MAX_BACKGROUND_WRITES) await Promise.race(background.values());
    if (backgroundError) throw backgroundError;
  }

  function addBackground(absolute: string, work: Promise<void>): void {
    const write = work.then(
      () => {
        background.delete(absolute);
      },
      (err: unknown) => {
        background.delete(absolute);
        backgroundError ??= err;
      },
    );
    background.set(absolute, write);
  }

  async function writeInBackground(
    absolute: string,
    chunks: Uint8Array[],
    mode: number,
    mtime: number | undefined,
  ): Promise<void> {
    await makeRoom(absolute);
    addBackground(absolute, target.writeChunks(absolute, chunks, mode, mtime));
  }

  async function waitForBackground(): Promise<void> {
    while (background.size > 0) await Promise.all(background.values());
    if (backgroundError) throw backgroundError;
  }

  extract.on("entry", (header, stream, next) => {
    members += 1;
    handleEntry(header, stream as unknown as EntryStream).then(
      () => next(),
      (err: unknown) => {
        stream.resume();
        next(
          err instanceof RestoreError
            ? err
            : new RestoreError(
                `Could not extract '${header.name}' from ${context}: ${err instanceof Error ? err.message : String(err)}`,
                {
                  cause: err,
                },
              ),
        );
      },
    );
  });

  async function drain(stream: EntryStream): Promise<void> {
    for await (const _chunk of stream) {
      // skipped member: consume its data
    }
  }

  async function handleEntry(header: tarStream.Header, stream: EntryStream): Promise<void> {
    const mapped = mapMemberName(header.name, rules, target);
    if (mapped === null) return drain(stream);
    const type = header.type as string | null;
    switch (type) {
      case "file":
      case "contiguous-file": {
        const absolute = target.resolve(mapped, context);
        const mode = header.mode ?? 0o600;
        if (header.size <= SMALL_FILE_BYTES) {
          const chunks: Uint8Array[] = [];
          for await (const chunk of stream) chunks.push(chunk);
          await writeInBackground(absolute, chunks, mode, memberMtime(header));
          return;
        }
        // Its last writes and fsync finish in the background while the next members are decoded.
        await makeRoom(absolute);
        const { completion } = await target.streamFile(absolute, stream, mode, memberMtime(header));
        addBackground(absolute, completion);
        return;
      }
      case "directory": {
        const absolute = target.resolve(mapped, context);
        await target.addDirectory(absolute, header.mode ?? undefined, memberMtime(header));
        return drain(stream);
      }
      case "symlink": {
        const absolute = target.resolve(mapped, context);
        target.addSymlink(absolute, header.linkname ?? "", header.name, context);
        return drain(stream);
      }
      case "link":
        throw new RestoreError(
          `Refusing to extract hard link '${header.name}' -> '${header.linkname}' from ${context}: hard links are not supported`,
        );
      default:
        throw new RestoreError(`Unsupported tar member type '${type ?? "unknown"}' for '${header.name}' in ${context}`);
    }
  }

  // Count bytes on the way in, then hand them to tar-stream (a streamx Writable).
  const sink = new Writable({
    highWaterMark: 1024 * 1024,
    write(chunk: Buffer, _encoding, callback) {
      bytes += chunk.byteLength;
      if (extract.write(chunk)) callback();
      else extract.once("drain", () => callback());
    },
    final(callback) {
      extract.once("error", (err: Error) => callback(err));
      extract.once("finish", () => {
        waitForBackground().then(
          () => callback(),
          (err: unknown) => callback(err instanceof Error ? err : new Error(String(err))),
        );
      });
      extract.end(undefined as unknown as Buffer); // streamx end() takes an optional chunk
    },
    destroy(err, callback) {
      extract.destroy(err ?? undefined);
      callback(err);
    },
  });
  extract.on("error", (err: Error) => {
    const wrapped =
      err instanceof RestoreError
        ? err
        : new RestoreError(`Invalid tar data in ${context}: ${err.message}`, { cause: err });
    sink.destroy(wrapped);
  });
  return { sink, result: () => ({ bytes, members }) };
}

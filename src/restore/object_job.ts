/**
 * Restoring one stored object (a tar chunk/bundle/main object, or a delta hash object written as
 * one file): read stream → byte counter → decode stream → tar extractor or file writer. Runs in
 * an object worker thread, or in-process when no workers are used.
 */
import { Transform, type Duplex } from "node:stream";
import { pipeline } from "node:stream/promises";

import type { Metadata, StorageBackend } from "../storage/types.js";
import { RestoreError } from "./errors.js";
import { createTarExtractor, tarRulesForFormat } from "./tar_extract.js";
import type { RestoreTarget } from "./target.js";
import { hasContent } from "./delta_restore.js";

export type ObjectJob =
  | { kind: "tar-object"; key: string }
  /** `hexdigest`/`fileSize` (delta manifests) let a delta restore keep an identical local file. */
  | { kind: "file-object"; key: string; relativePath: string; hexdigest?: string; fileSize?: number };

export interface ObjectJobContext {
  storage: StorageBackend;
  target: RestoreTarget;
  createDecodeStream: (metadata: Metadata) => Duplex;
  /** Stored bytes read (progress). */
  onBytes: (bytes: number) => void;
  signal?: AbortSignal;
}

function checkDecodedSize(metadata: Metadata, decoded: number, label: string): void {
  const expected = metadata["original-file-size"];
  if (expected === undefined || expected === "") return;
  if (Number(expected) !== decoded) {
    throw new RestoreError(
      `Object '${label}' is corrupt or truncated: it decoded to ${decoded} bytes, its metadata says original-file-size ${expected}`,
    );
  }
}

export async function restoreObject(job: ObjectJob, ctx: ObjectJobContext): Promise<void> {
  if (job.kind === "file-object" && ctx.target.delta && job.hexdigest && job.fileSize !== undefined) {
    const destination = ctx.target.resolve(job.relativePath, `object '${job.key}'`);
    if (await hasContent(destination, job.fileSize, job.hexdigest)) {
      // Same content as the backup: nothing to download (a fresh restore writes these files 0600).
      await ctx.target.keepFile(destination, 0o600);
      return;
    }
  }
  const { stream, metadata } = await ctx.storage.getReadStream(job.key);
  const counter = new Transform({
    highWaterMark: 1024 * 1024,
    transform(chunk: Buffer, _encoding, callback) {
      ctx.onBytes(chunk.byteLength);
      callback(null, chunk);
    },
  });
  const options = ctx.signal ? { signal: ctx.signal } : {};
  try {
    if (job.kind === "tar-object") {
      const rules = tarRulesForFormat(metadata.format || undefined);
      const decoder = ctx.createDecodeStream(metadata);
      const { sink, result } = createTarExtractor(ctx.target, rules, `object '${job.key}'`);
      await pipeline(stream, counter, decoder, sink, options);
      checkDecodedSize(metadata, result().bytes, job.key);
    } else {
      const destination = ctx.target.resolve(job.relativePath, `object '${job.key}'`);
      const decoder = ctx.createDecodeStream(metadata);
      let written = 0;
      await pipeline(
        stream,
        counter,
        decoder,
        async (source: AsyncIterable<Buffer>) => {
          written = await ctx.target.writeFile(destination, source, 0o600);
        },
        options,
      );
      checkDecodedSize(metadata, written, job.key);
    }
  } finally {
    stream.destroy();
  }
}

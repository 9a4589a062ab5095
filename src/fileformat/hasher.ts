/**
 * The hasher thread of a pool worker: keeps one Hash per id and digests the plaintext chunks a
 * file task sends it, one chunk behind the codec, so hashing overlaps compression instead of
 * adding to it (sha1 of a 16 MiB segment costs about as much as snappy). Started by
 * plaintext_hash.ts; each chunk buffer is handed back for reuse.
 */
import { createHash, type Hash } from "node:crypto";
import { parentPort } from "node:worker_threads";
import { toWire } from "./errors.js";
import type { FromHasher, ToHasher } from "./protocol.js";

const port = parentPort;
if (port === null) throw new Error("fileformat hasher must run in a worker thread");

/** Hasher-thread side: one Hash per id, chunk buffers handed back for reuse. */
function serveHashes(): void {
  const hashes = new Map<number, Hash | Error>();
  const reply = (message: FromHasher, transfer?: ArrayBuffer[]): void => port!.postMessage(message, transfer ?? []);
  port!.on("message", (message: ToHasher) => {
    switch (message.type) {
      case "start":
        try {
          hashes.set(message.id, createHash(message.algorithm));
        } catch (err) {
          hashes.set(message.id, err instanceof Error ? err : new Error(String(err)));
        }
        break;
      case "chunk": {
        const hash = hashes.get(message.id);
        if (hash && !(hash instanceof Error)) hash.update(new Uint8Array(message.data, 0, message.length));
        reply({ type: "spare", id: message.id, data: message.data }, [message.data]);
        break;
      }
      case "digest": {
        const hash = hashes.get(message.id);
        hashes.delete(message.id);
        if (hash === undefined || hash instanceof Error) {
          reply({
            type: "error",
            id: message.id,
            error: toWire(hash ?? new Error(`hasher thread has no hash ${message.id}`)),
          });
        } else {
          reply({ type: "digest", id: message.id, hex: hash.digest("hex") });
        }
        break;
      }
      case "discard":
        hashes.delete(message.id);
        break;
    }
  });
}

serveHashes();

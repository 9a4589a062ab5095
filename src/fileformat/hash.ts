import { createHash, getHashes } from "node:crypto";
import { open } from "node:fs/promises";
import { FileFormatError } from "./errors.js";

// Python hashlib spellings (written verbatim into `hash-algorithm` metadata) → Node names.
const PYTHON_TO_NODE: Record<string, string> = {
  md5: "md5",
  sha1: "sha1",
  sha224: "sha224",
  sha256: "sha256",
  sha384: "sha384",
  sha512: "sha512",
  blake2b: "blake2b512",
  blake2s: "blake2s256",
  sha3_224: "sha3-224",
  sha3_256: "sha3-256",
  sha3_384: "sha3-384",
  sha3_512: "sha3-512",
  sha512_224: "sha512-224",
  sha512_256: "sha512-256",
};

/** python hashlib name → node hash name; throws FileFormatError on unknown names. */
export function nodeHashName(pythonName: string): string {
  const nodeName = PYTHON_TO_NODE[pythonName.toLowerCase()];
  if (nodeName === undefined || !getHashes().includes(nodeName)) {
    throw new FileFormatError(`unsupported hash algorithm '${pythonName}'`);
  }
  return nodeName;
}

/**
 * Digest (hex) of the first `size` bytes of a local file, read in 1 MiB pieces; `algorithm` is a
 * Node hash name. Callers run it in a worker thread when the file is large.
 */
export async function hashLocalFile(localPath: string, algorithm: string, size: number): Promise<string> {
  const hash = createHash(algorithm);
  const handle = await open(localPath, "r");
  try {
    const buf = Buffer.allocUnsafe(Math.min(1024 * 1024, Math.max(size, 1)));
    let position = 0;
    while (position < size) {
      const { bytesRead } = await handle.read(buf, 0, Math.min(buf.length, size - position), position);
      if (bytesRead === 0) break;
      hash.update(buf.subarray(0, bytesRead));
      position += bytesRead;
    }
  } finally {
    await handle.close();
  }
  return hash.digest("hex");
}

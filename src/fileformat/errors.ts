/** Errors of the stored-file format. Workers send them across threads by `name`, see `fromWire`. */

export class FileFormatError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "FileFormatError";
  }
}

/** Authentication failed: bad magic, truncated file, wrong key, or HMAC mismatch. */
export class IntegrityError extends FileFormatError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message.startsWith("Integrity check failed") ? message : `Integrity check failed: ${message}`, options);
    this.name = "IntegrityError";
  }
}

/** The metadata names an encryption key we do not have (upstream: InvalidConfigurationError). */
export class KeyNotFoundError extends FileFormatError {
  constructor(readonly keyId: string) {
    super(`File is encrypted with key '${keyId}' but key not found`);
    this.name = "KeyNotFoundError";
  }
}

export interface WireError {
  name: string;
  message: string;
  code?: string;
  keyId?: string;
}

export function toWire(err: unknown): WireError {
  if (err instanceof Error) {
    const wire: WireError = { name: err.name, message: err.message };
    const code = (err as NodeJS.ErrnoException).code;
    if (typeof code === "string") wire.code = code;
    if (err instanceof KeyNotFoundError) wire.keyId = err.keyId;
    return wire;
  }
  return { name: "Error", message: String(err) };
}

export function fromWire(wire: WireError): Error {
  let err: Error;
  switch (wire.name) {
    case "IntegrityError":
      err = new IntegrityError(wire.message);
      break;
    case "KeyNotFoundError":
      err = new KeyNotFoundError(wire.keyId ?? "");
      break;
    case "FileFormatError":
      err = new FileFormatError(wire.message);
      break;
    default:
      err = new Error(wire.message);
      err.name = wire.name;
  }
  if (wire.code !== undefined) (err as NodeJS.ErrnoException).code = wire.code;
  return err;
}

/** Wraps a codec library's error so callers can catch FileFormatError for any bad input. */
export function asFileFormatError(err: unknown, what: string): FileFormatError {
  if (err instanceof FileFormatError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new FileFormatError(`${what}: ${message}`, { cause: err });
}

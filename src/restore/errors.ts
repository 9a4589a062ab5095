/** Errors of `pghoard_restore`; the command prints them as `FATAL: RestoreError: <message>` and exits 1. */
export class RestoreError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "RestoreError";
  }
}

/** Message of an unknown thrown value, for wrapping into RestoreError. */
export function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}

/** `<ErrorClass>: <message>`, the form upstream uses when it wraps unexpected exceptions. */
export function describeError(err: unknown): string {
  if (err instanceof Error) return `${err.name || err.constructor.name}: ${err.message}`;
  return String(err);
}

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { ErrorFactory, isConnectionError, isNoSuchFile, isNotFound, statusOf } from "../../src/storage/errors.js";
import { StorageError, StorageNotFoundError } from "../../src/storage/types.js";

describe("storage/errors", () => {
  it("statusOf reads the HTTP status where each SDK keeps it", () => {
    assert.equal(statusOf({ $metadata: { httpStatusCode: 404 } }), 404); // AWS
    assert.equal(statusOf({ statusCode: 403, code: "AuthorizationFailure" }), 403); // Azure
    assert.equal(statusOf({ code: 409 }), 409); // Google
    assert.equal(statusOf({ code: "ECONNRESET" }), undefined);
    assert.equal(statusOf(null), undefined);
  });

  it("isNotFound knows 404 and the SDKs' own names for a missing object", () => {
    assert.ok(isNotFound({ $metadata: { httpStatusCode: 404 } }));
    assert.ok(isNotFound(Object.assign(new Error("x"), { name: "NoSuchKey" })));
    assert.ok(isNotFound({ code: "BlobNotFound" }));
    assert.ok(isNotFound({ code: "CannotVerifyCopySource", statusCode: 403 }));
    assert.ok(!isNotFound({ statusCode: 403 }));
    assert.ok(!isNotFound(new Error("plain")));
  });

  it("classifies SFTP errors", () => {
    assert.ok(isNoSuchFile({ code: 2, message: "x" }));
    assert.ok(isNoSuchFile(new Error("get: No such file /a/b")));
    assert.ok(!isNoSuchFile({ code: 3, message: "Permission denied" }));
    assert.ok(isConnectionError({ code: "ECONNRESET" }));
    assert.ok(isConnectionError(new Error("No SFTP connection available")));
    assert.ok(!isConnectionError({ code: 3, message: "Permission denied" }));
  });

  it("ErrorFactory translates failures without naming a secret", async () => {
    const errors = new ErrorFactory("s3", ["topsecretvalue", null, "abc"]);
    const wrapped = errors.wrap(
      Object.assign(new Error("denied for topsecretvalue"), { $metadata: { httpStatusCode: 403 } }),
      "upload",
      "k/1",
    );
    assert.ok(wrapped instanceof StorageError);
    assert.equal(wrapped.message, "s3: upload k/1 failed: Error: denied for *** (HTTP 403)");
    assert.equal((wrapped as StorageError & { status?: number }).status, 403);
    assert.equal(errors.wrap(wrapped, "again"), wrapped);
    const missing = errors.translate({ $metadata: { httpStatusCode: 404 } }, "copy to b from", "a", "a");
    assert.ok(missing instanceof StorageNotFoundError);
    assert.equal(missing.key, "a");
    await assert.rejects(
      errors.translating("download", "k", async () => Promise.reject({ code: "BlobNotFound" })),
      StorageNotFoundError,
    );
    await assert.rejects(
      errors.wrapping("list", "p/", async () => Promise.reject(new Error("boom"))),
      { message: "s3: list p/ failed: Error: boom" },
    );
    assert.equal(await errors.wrapping("list", "p/", async () => 7), 7);
    const local = new ErrorFactory("local", []);
    const because = local.because("reading k failed", new Error("EIO: i/o error"));
    assert.equal(because.message, "local: reading k failed: EIO: i/o error");
    assert.ok(because.cause instanceof Error);
  });
});

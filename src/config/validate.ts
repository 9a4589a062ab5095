/**
 * Turns the parsed pghoard.json into a PghoardConfig: walks the schema (schema.ts) to check
 * types and fill in upstream's defaults, normalizes node entries and object_storage, and runs
 * the cross-key checks upstream does at load time. Pure: no file system access (PG_VERSION is
 * read by loadConfig).
 *
 * Strictness follows config.md §1: a ConfigError only where upstream fails too (at load or as
 * soon as the value is used); where upstream tolerates a value, a warning.
 */
import { createPrivateKey, createPublicKey } from "node:crypto";
import os from "node:os";
import { parseNodeEntry } from "./connection.js";
import { pyRepr } from "../common/pycompat.js";
import { ConfigError, describeValue } from "./errors.js";
import {
  STORAGE_TYPES,
  siteSection,
  storageCommonSection,
  storageSections,
  topLevelSection,
  toolWrites,
  type DefaultContext,
  type KeySpec,
  type SectionSpec,
  type ValueType,
} from "./schema.js";
import type { NodeConfig, PghoardConfig, SiteConfig, Tool } from "./types.js";

export interface ValidateOptions {
  tool?: Tool;
  /** Default: warnings go to the `pghoard.config` logger. */
  warn?: (message: string) => void;
  /** Only used to prefix warnings. */
  configPath?: string;
  /** For tests; default: the number of CPUs (Python's `multiprocessing.cpu_count()`). */
  cpuCount?: number;
  /** Default of `alert_file_dir` when `backup_location` is null; default `process.cwd()`. */
  cwd?: string;
}

interface Ctx {
  tool: Tool | undefined;
  warn: (message: string) => void;
  cpuCount: number;
  cwd: string;
  root: Record<string, unknown>;
  siteName?: string;
}

type Json = Record<string, unknown>;

export function isPlainObject(value: unknown): value is Json {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** Python truthiness, for booleans upstream only ever tests with `if value:`. */
export function pyTruthy(value: unknown): boolean {
  if (Array.isArray(value)) return value.length > 0;
  if (isPlainObject(value)) return Object.keys(value).length > 0;
  return Boolean(value);
}

/** `a.b`, or `a["odd key"]` when the key is not a plain identifier. */
export function keyPath(parent: string, key: string): string {
  if (/^[A-Za-z_][A-Za-z0-9_-]*$/.test(key)) return parent ? `${parent}.${key}` : key;
  return `${parent}[${JSON.stringify(key)}]`;
}

function valueMatches(value: unknown, type: ValueType): boolean {
  switch (type) {
    case "null":
      return value === null;
    case "string":
      return typeof value === "string";
    case "boolean":
      return typeof value === "boolean";
    case "integer":
      return typeof value === "number" && Number.isInteger(value);
    case "number":
      return typeof value === "number" && Number.isFinite(value);
    case "array":
      return Array.isArray(value);
    case "object":
      return isPlainObject(value);
  }
}

const TYPE_NAMES: Record<ValueType, string> = {
  null: "null",
  string: "a string",
  boolean: "a boolean (true/false)",
  integer: "an integer",
  number: "a number",
  array: "an array",
  object: "an object",
};

function describeTypes(types: readonly ValueType[]): string {
  const names = types.map((t) => TYPE_NAMES[t]);
  return names.length <= 1 ? (names[0] ?? "") : `${names.slice(0, -1).join(", ")} or ${names[names.length - 1]}`;
}

/** rohmu's pydantic models convert compatible values; mirror the common conversions. */
function pydanticCoerce(value: unknown, types: readonly ValueType[]): unknown {
  if (types.some((t) => valueMatches(value, t))) return value;
  if (types.includes("boolean")) {
    if (typeof value === "string") {
      const lower = value.trim().toLowerCase();
      if (["1", "true", "yes", "on", "y", "t"].includes(lower)) return true;
      if (["0", "false", "no", "off", "n", "f"].includes(lower)) return false;
    }
    if (value === 0 || value === 1) return value === 1;
  }
  if (
    (types.includes("integer") || types.includes("number")) &&
    typeof value === "string" &&
    /^\s*-?\d+(\.\d+)?\s*$/.test(value)
  ) {
    const n = Number(value);
    if (types.includes("number") || Number.isInteger(n)) return n;
  }
  if (types.includes("string") && typeof value === "number") return String(value);
  return value;
}

function describeKind(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  return typeof value === "object" ? "an object" : `a ${typeof value}`;
}

function cloneJson<T>(value: T): T {
  return value === undefined ? value : (JSON.parse(JSON.stringify(value)) as T);
}

function defaultFor(spec: KeySpec, ctx: Ctx, current: Json): unknown {
  const d = spec.default;
  if (!d) return undefined;
  if ("value" in d) return cloneJson(d.value);
  const dctx: DefaultContext = { cpuCount: ctx.cpuCount, cwd: ctx.cwd, current, root: ctx.root };
  if (ctx.siteName !== undefined) dctx.siteName = ctx.siteName;
  return d.compute(dctx);
}

function formatAllowed(allowed: readonly (string | null)[]): string {
  return allowed.map((a) => (a === null ? "null" : JSON.stringify(a))).join(", ");
}

/**
 * Applies `spec.onInvalid` to a bad value. Returns the value to store, or `undefined` to drop
 * the key.
 */
function handleInvalid(message: string, spec: KeySpec, value: unknown, ctx: Ctx, current: Json): unknown {
  const policy = spec.onInvalid ?? "error";
  if (policy === "error" || (policy === "writer" && toolWrites(ctx.tool))) throw new ConfigError(message);
  if (policy === "default") {
    const fallback = defaultFor(spec, ctx, current);
    ctx.warn(`${message}; using ${JSON.stringify(fallback)}`);
    return fallback;
  }
  if (spec.types.includes("boolean") && !spec.types.some((t) => valueMatches(value, t))) {
    const truthy = pyTruthy(value);
    ctx.warn(`${message}; read as ${truthy} (Python truthiness, as upstream)`);
    return truthy;
  }
  if (spec.types.length === 1 && spec.types[0] === "object" && !isPlainObject(value)) {
    ctx.warn(`${message}; ignored, as upstream does`);
    return undefined;
  }
  ctx.warn(message);
  return value;
}

function checkValue(raw: unknown, spec: KeySpec, path: string, ctx: Ctx, section: SectionSpec, current: Json): unknown {
  const value = section.pydanticCoercion ? pydanticCoerce(raw, spec.types) : raw;
  // A secret's value never goes into a message, only its kind.
  const shown = spec.secret ? describeKind(value) : describeValue(value);
  if (!spec.types.some((t) => valueMatches(value, t))) {
    return handleInvalid(`${path}: expected ${describeTypes(spec.types)}, got ${shown}`, spec, value, ctx, current);
  }
  if (spec.allowed && !spec.allowed.includes(value as string | null)) {
    return handleInvalid(`${path}: ${shown} is not one of ${formatAllowed(spec.allowed)}`, spec, value, ctx, current);
  }
  if (typeof value === "number") {
    if (spec.min !== undefined && value < spec.min) {
      const limit = spec.min === Number.MIN_VALUE ? "must be greater than 0" : `must be at least ${spec.min}`;
      const reason = spec.minReason ? ` (${spec.minReason})` : "";
      return handleInvalid(`${path}: ${value} ${limit}${reason}`, spec, value, ctx, current);
    }
    if (spec.max !== undefined && value > spec.max) {
      return handleInvalid(`${path}: ${value} must be at most ${spec.max}`, spec, value, ctx, current);
    }
  }
  if (Array.isArray(value) && spec.elements) {
    value.forEach((element, i) => {
      if (!valueMatches(element, spec.elements as ValueType)) {
        throw new ConfigError(
          `${path}[${i}]: expected ${TYPE_NAMES[spec.elements as ValueType]}, got ${describeValue(element)}`,
        );
      }
    });
    return [...value];
  }
  if (isPlainObject(value) && spec.values) {
    for (const [k, v] of Object.entries(value)) {
      if (!spec.values.some((t) => valueMatches(v, t))) {
        const got = spec.secret ? describeKind(v) : describeValue(v);
        throw new ConfigError(`${keyPath(path, k)}: expected ${describeTypes(spec.values)}, got ${got}`);
      }
    }
    return cloneJson(value);
  }
  return value;
}

/** Checks and completes one object described by `section`. Unknown keys are kept and warned about. */
function resolveSection(raw: Json, section: SectionSpec, path: string, ctx: Ctx): Json {
  const out: Json = { ...raw };
  for (const spec of section.keys) {
    const p = keyPath(path, spec.key);
    if (raw[spec.key] === null && !spec.types.includes("null") && !spec.default && spec.required !== "yes") {
      // Optional keys without a default: upstream reads them with `.get()` / `or`, so null means unset.
      delete out[spec.key];
    } else if (raw[spec.key] !== undefined) {
      const checked = checkValue(raw[spec.key], spec, p, ctx, section, out);
      if (checked === undefined) delete out[spec.key];
      else out[spec.key] = checked;
    } else if (spec.default) {
      out[spec.key] = defaultFor(spec, ctx, out);
    }
    if (spec.deprecated && raw[spec.key] !== undefined) ctx.warn(`${p} is deprecated: ${spec.deprecated}`);
    if (spec.section && isPlainObject(out[spec.key])) {
      out[spec.key] = resolveSection(out[spec.key] as Json, spec.section, p, ctx);
    }
  }
  warnUnknownKeys(raw, section, path, ctx);
  return out;
}

function warnUnknownKeys(
  raw: Json,
  section: SectionSpec,
  path: string,
  ctx: Ctx,
  extraKnown: readonly string[] = [],
): void {
  const known = new Set([...section.keys.map((k) => k.key), ...(section.derived ?? []), ...extraKnown]);
  for (const key of Object.keys(raw)) {
    if (known.has(key)) continue;
    const hint = section.ignored?.find((i) => i.name === key)?.hint;
    ctx.warn(`${keyPath(path, key)}: unknown configuration key, ignored${hint ? ` (${hint})` : ""}`);
  }
}

function resolveObjectStorage(raw: unknown, siteName: string, path: string, ctx: Ctx): Json {
  const backupLocation = ctx.root.backup_location as string | null;
  if (raw === null || (isPlainObject(raw) && Object.keys(raw).length === 0)) {
    // Upstream treats null and {} alike: the legacy local store rooted at backup_location.
    if (!backupLocation) {
      throw new ConfigError(
        `${path}: not set and backup_location is null, so site ${pyRepr(siteName)} has no backup storage`,
      );
    }
    return { storage_type: "local", directory: backupLocation };
  }
  if (!isPlainObject(raw)) throw new ConfigError(`${path}: expected an object or null, got ${describeValue(raw)}`);
  if (!("storage_type" in raw)) {
    throw new ConfigError(
      `${path}.storage_type: Site ${pyRepr(siteName)}: storage_type not defined for object_storage`,
    );
  }
  const storageType = raw.storage_type;
  if (typeof storageType !== "string" || !(STORAGE_TYPES as readonly string[]).includes(storageType)) {
    const shown = typeof storageType === "string" ? pyRepr(storageType) : describeValue(storageType);
    throw new ConfigError(
      `${path}.storage_type: unsupported storage type ${shown} (expected one of ${formatAllowed(STORAGE_TYPES)})`,
    );
  }
  if (storageType === "local" && raw.directory === backupLocation) {
    throw new ConfigError(
      `${path}.directory: Site ${pyRepr(siteName)}: invalid 'local' target directory ${backupLocation === null ? "None" : pyRepr(backupLocation)}, must be different from 'backup_location'`,
    );
  }
  const typeSection = storageSections[storageType as keyof typeof storageSections];
  const merged: SectionSpec = {
    ...typeSection,
    keys: [...storageCommonSection.keys, ...typeSection.keys],
  };
  const out = resolveSection(raw, merged, path, ctx);
  for (const spec of merged.keys) {
    if (spec.required && out[spec.key] === undefined) {
      throw new ConfigError(`${keyPath(path, spec.key)}: required for storage_type ${pyRepr(storageType)}`);
    }
  }
  checkStorageCombinations(storageType, out, path);
  return out;
}

function checkStorageCombinations(storageType: string, s: Json, path: string): void {
  const has = (key: string): boolean => s[key] !== undefined && s[key] !== null && s[key] !== "";
  switch (storageType) {
    case "s3":
      if (has("cert_path") && s.is_verify_tls !== true) {
        throw new ConfigError(`${path}.cert_path: only allowed together with is_verify_tls: true`);
      }
      break;
    case "google":
      if (!has("project_id") && !has("bucket_name")) {
        throw new ConfigError(
          `${path}: at least one of project_id and bucket_name is required for storage_type 'google'`,
        );
      }
      break;
    case "azure":
      if (!has("account_key") && !has("sas_token")) {
        throw new ConfigError(`${path}: one of account_key and sas_token is required for storage_type 'azure'`);
      }
      if (has("host") !== has("port")) {
        throw new ConfigError(`${path}.${has("host") ? "port" : "host"}: host and port must be set together`);
      }
      break;
    case "sftp":
      if (!has("password") && !has("private_key")) {
        throw new ConfigError(`${path}: Password or private key required (set password or private_key)`);
      }
      break;
  }
}

function checkEncryption(site: Json, path: string, ctx: Ctx): void {
  const keys = site.encryption_keys as Record<string, Json>;
  for (const [keyId, entry] of Object.entries(keys)) {
    for (const part of ["public", "private"]) {
      if (entry[part] !== undefined && entry[part] !== null && typeof entry[part] !== "string") {
        throw new ConfigError(`${keyPath(keyPath(`${path}.encryption_keys`, keyId), part)}: expected a PEM string`);
      }
    }
    // Checked here so a broken key is reported as such, not later as a corrupt backup object.
    if (typeof entry.private === "string") {
      try {
        const key = createPrivateKey(entry.private);
        if (key.asymmetricKeyType !== "rsa") throw new Error(`not an RSA key (${key.asymmetricKeyType})`);
      } catch (err) {
        // OpenSSL's reason only; the PEM itself never goes into a message.
        throw new ConfigError(
          `${keyPath(keyPath(`${path}.encryption_keys`, keyId), "private")}: not a usable RSA private key PEM: ${(err as Error).message}`,
        );
      }
    }
  }
  const keyId = site.encryption_key_id as string | null;
  if (keyId === null) return;
  const fail = (message: string): void => {
    if (toolWrites(ctx.tool)) throw new ConfigError(message);
    ctx.warn(message);
  };
  const entry = keys[keyId];
  if (!entry) {
    fail(`${path}.encryption_key_id: key id ${pyRepr(keyId)} is not defined in ${path}.encryption_keys`);
    return;
  }
  if (typeof entry.public !== "string") {
    fail(`${keyPath(`${path}.encryption_keys`, keyId)}.public: no public key for encryption_key_id ${pyRepr(keyId)}`);
    return;
  }
  try {
    const key = createPublicKey(entry.public);
    if (key.asymmetricKeyType !== "rsa") throw new Error(`not an RSA key (${key.asymmetricKeyType})`);
  } catch (err) {
    fail(
      `${keyPath(`${path}.encryption_keys`, keyId)}.public: not a usable RSA public key PEM: ${(err as Error).message}`,
    );
  }
}

function resolveNodes(raw: unknown, site: Json, path: string, ctx: Ctx): NodeConfig[] {
  if (raw === undefined || raw === null) {
    if (site.active && ctx.tool === "daemon") {
      ctx.warn(`${path}: not set; the site is active but has no PostgreSQL node to back up from`);
    }
    return [];
  }
  if (!Array.isArray(raw))
    throw new ConfigError(`${path}: expected an array of node entries, got ${describeValue(raw)}`);
  return raw.map((entry, i) => parseNodeEntry(entry, `${path}[${i}]`));
}

function resolveSite(raw: unknown, siteName: string, path: string, ctx: Ctx): SiteConfig {
  if (!isPlainObject(raw))
    throw new ConfigError(`${path}: expected an object (site configuration), got ${describeValue(raw)}`);
  const siteCtx: Ctx = { ...ctx, siteName };
  const site = resolveSection(raw, siteSection, path, siteCtx);
  site.nodes = resolveNodes(raw.nodes, site, `${path}.nodes`, siteCtx);
  site.object_storage = resolveObjectStorage(site.object_storage, siteName, `${path}.object_storage`, siteCtx);
  checkEncryption(site, path, siteCtx);

  const needsPgdata = (ctx.tool === "daemon" || ctx.tool === "archive_sync") && site.active === true;
  if (needsPgdata && !site.pg_data_directory) {
    throw new ConfigError(`${path}.pg_data_directory: Site ${pyRepr(siteName)}: pg_data_directory must be set`);
  }
  if (site.basebackup_hour !== undefined && site.basebackup_minute === undefined) {
    ctx.warn(`${path}.basebackup_hour: set without basebackup_minute, ignored`);
  }
  for (const command of ["pg_basebackup_path", "pg_receivexlog_path"]) {
    // Upstream resolves the site value, else the top-level one, into the site.
    if (site[command] === undefined && typeof ctx.root[command] === "string") site[command] = ctx.root[command];
  }
  return site as SiteConfig;
}

function checkCompressionLevel(config: Json, ctx: Ctx): void {
  const compression = config.compression as { algorithm: string; level: number };
  const { algorithm, level } = compression;
  const bad =
    (algorithm === "lzma" && (level < 0 || level > 9)) || (algorithm === "zstd" && (level > 22 || level < -131072));
  if (!bad) return;
  const message = `compression.level: ${level} is out of range for ${algorithm} (${algorithm === "lzma" ? "0–9" : "up to 22"})`;
  if (toolWrites(ctx.tool)) throw new ConfigError(message);
  ctx.warn(message);
}

/** Validates a parsed pghoard.json and returns it with every default filled in. */
export function validateConfig(raw: unknown, options: ValidateOptions = {}): PghoardConfig {
  const prefix = options.configPath ? `${options.configPath}: ` : "";
  // Without a callback, warnings still reach the log rather than vanishing. The logger (pino, ~70 ms
  // of CPU to load) is imported only then: pghoard_postgres_command's direct mode reads the config
  // once per WAL segment.
  const warnSink =
    options.warn ??
    ((message: string) =>
      void import("../common/logger.js").then(({ getLogger }) => getLogger("pghoard.config").warn(message)));
  if (!isPlainObject(raw)) {
    throw new ConfigError(`configuration must be a JSON object, got ${describeValue(raw)}`);
  }
  const root: Json = {};
  const ctx: Ctx = {
    tool: options.tool,
    warn: (message) => warnSink(prefix + message),
    cpuCount: options.cpuCount ?? (os.cpus().length || os.availableParallelism()),
    cwd: options.cwd ?? process.cwd(),
    root,
  };
  // Top-level keys first (sites need path_prefix, backup_location); sites are resolved below.
  const top = resolveSection(raw, topLevelSection, "", ctx);
  Object.assign(root, top);
  if (ctx.tool === "daemon" && !top.backup_location) {
    throw new ConfigError("backup_location: must be set for the daemon (upstream fails at startup without it)");
  }
  checkCompressionLevel(top, ctx);

  const sites: Record<string, SiteConfig> = {};
  for (const [siteName, siteRaw] of Object.entries(top.backup_sites as Json)) {
    sites[siteName] = resolveSite(siteRaw, siteName, keyPath("backup_sites", siteName), ctx);
  }
  for (const [siteName, site] of Object.entries(sites)) {
    site.moved_from.forEach((other, i) => {
      if (!(other in sites)) {
        throw new ConfigError(
          `${keyPath("backup_sites", siteName)}.moved_from[${i}]: site ${pyRepr(other)} is not defined in backup_sites`,
        );
      }
      if (other === siteName) {
        throw new ConfigError(
          `${keyPath("backup_sites", siteName)}.moved_from[${i}]: a site cannot be moved from itself`,
        );
      }
    });
  }
  top.backup_sites = sites;
  return top as PghoardConfig;
}

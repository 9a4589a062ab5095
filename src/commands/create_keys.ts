/**
 * pghoard_create_keys (cli.md §5): makes an RSA key pair for backup encryption and either prints
 * the configuration snippet or adds it to the configuration file (rewritten atomically).
 */
import { generateKeyPair } from "node:crypto";
import { stat } from "node:fs/promises";
import { promisify } from "node:util";
import { writeFileAtomic } from "../common/fs.js";
import { createLogger } from "../common/logger.js";
import { ConfigError, getSiteFromConfig, readJsonConfigFile } from "../config/index.js";
import { pyRepr } from "../common/pycompat.js";
import { EXIT_OK, runCli } from "./cli.js";
import { CREATE_KEYS_SPEC } from "./cli_specs.js";

class CommandError extends Error {}

const generateKeyPairAsync = promisify(generateKeyPair);

export interface KeyPair {
  /** PKCS#8 PEM (`BEGIN PRIVATE KEY`), unencrypted. */
  privatePem: string;
  /** SubjectPublicKeyInfo PEM (`BEGIN PUBLIC KEY`). */
  publicPem: string;
}

/** cryptography (upstream) refuses fewer than 1024 bits; OpenSSL refuses more than 16384. */
export const MIN_KEY_BITS = 1024;
export const MAX_KEY_BITS = 16384;

export async function createKeys(bits: number): Promise<KeyPair> {
  if (!(bits >= MIN_KEY_BITS && bits <= MAX_KEY_BITS)) {
    throw new CommandError(`--bits ${bits}: the RSA key size must be between ${MIN_KEY_BITS} and ${MAX_KEY_BITS} bits`);
  }
  const { privateKey, publicKey } = await generateKeyPairAsync("rsa", {
    modulusLength: bits,
    publicExponent: 65537,
    privateKeyEncoding: { type: "pkcs8", format: "pem" },
    publicKeyEncoding: { type: "spki", format: "pem" },
  });
  return { privatePem: privateKey, publicPem: publicKey };
}

function sortKeysDeep(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(sortKeysDeep);
  if (value !== null && typeof value === "object") {
    const obj = value as Record<string, unknown>;
    return Object.fromEntries(
      Object.keys(obj)
        .sort()
        .map((k) => [k, sortKeysDeep(obj[k])]),
    );
  }
  return value;
}

/** Python's `json.dumps(obj, indent=4, sort_keys=True)`, including its default ASCII-only escaping. */
export function pythonJsonDumps(value: unknown): string {
  return JSON.stringify(sortKeysDeep(value), null, 4).replace(
    /[\u007f-\uffff]/g,
    (ch) => `\\u${ch.charCodeAt(0).toString(16).padStart(4, "0")}`,
  );
}

function keyConfig(site: string, keyId: string, keys: KeyPair): Record<string, unknown> {
  return {
    backup_sites: {
      [site]: {
        encryption_key_id: keyId,
        encryption_keys: { [keyId]: { private: keys.privatePem, public: keys.publicPem } },
      },
    },
  };
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

async function saveKeys(configPath: string, siteArg: string | undefined, keyId: string, bits: number): Promise<void> {
  // The raw file: no defaults, no checks, so it is written back as the operator wrote it.
  const config = await readJsonConfigFile(configPath);
  if (!isObject(config))
    throw new ConfigError(`Configuration file ${pyRepr(configPath)} does not contain a JSON object`);
  const site = getSiteFromConfig(config as { backup_sites: Record<string, never> }, siteArg);
  const siteConfig = (config.backup_sites as Record<string, unknown>)[site];
  if (!isObject(siteConfig)) throw new ConfigError(`backup_sites.${site}: expected an object (site configuration)`);
  siteConfig.encryption_keys ??= {};
  const existing = siteConfig.encryption_keys;
  if (!isObject(existing)) throw new ConfigError(`backup_sites.${site}.encryption_keys: expected an object`);
  if (Object.prototype.hasOwnProperty.call(existing, keyId)) {
    throw new CommandError(`key_id ${pyRepr(keyId)} already defined for site ${pyRepr(site)} in ${pyRepr(configPath)}`);
  }
  const keys = await createKeys(bits);
  existing[keyId] = { private: keys.privatePem, public: keys.publicPem };
  siteConfig.encryption_key_id = keyId;
  // 0600 like upstream's mkstemp-based rewrite: the file now holds a private key. Run as root, keep
  // the file's owner: the daemon (as postgres) must still be able to read its configuration.
  const { uid, gid } = await stat(configPath);
  const owner = process.getuid?.() === 0 ? { uid, gid } : undefined;
  await writeFileAtomic(configPath, pythonJsonDumps(config) + "\n", { mode: 0o600, owner });
  process.stdout.write(`Saved new key_id ${pyRepr(keyId)} for site ${pyRepr(site)} in ${pyRepr(configPath)}\n`);
  process.stdout.write(
    "NOTE: The pghoard daemon does not require the 'private' key in its configuration file, " +
      "it can be stored elsewhere to improve security\n",
  );
}

async function showKeyConfig(site: string | undefined, keyId: string, bits: number): Promise<void> {
  if (!site) throw new CommandError("Site must be defined if configuration file is not provided");
  const keys = await createKeys(bits);
  process.stdout.write(pythonJsonDumps(keyConfig(site, keyId, keys)) + "\n");
}

interface Options {
  debug?: boolean;
  site?: string;
  keyId: string;
  bits: number;
  config?: string;
}

/** Failures reported as one `FATAL:` line; anything else is a bug and propagates. */
function isExpectedFailure(err: unknown): boolean {
  return err instanceof CommandError || err instanceof ConfigError;
}

export async function main(argv: string[]): Promise<number> {
  return runCli(
    CREATE_KEYS_SPEC,
    argv,
    async (inv) => {
      const opts = inv.opts as unknown as Options;
      createLogger({ level: opts.debug ? "DEBUG" : "INFO" });
      if (opts.config) await saveKeys(opts.config, opts.site, opts.keyId, opts.bits);
      else await showKeyConfig(opts.site, opts.keyId, opts.bits);
      return EXIT_OK;
    },
    {
      fatal: (_inv) => ({
        write: (line) => process.stdout.write(`${line}\n`),
        withClassName: false,
        expected: isExpectedFailure,
      }),
    },
  );
}

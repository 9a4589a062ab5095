/** Per-site lookups other modules need: site selection, storage, keys, WAL directory. */
import { readFileSync } from "node:fs";
import path from "node:path";
import { pyRepr, pyReprList } from "../common/pycompat.js";
import { ConfigError } from "./errors.js";
import type { ObjectStorageConfig, PghoardConfig, SiteConfig } from "./types.js";

/** The site to work on: `site` if given and defined, else the only one (upstream's three errors). */
export function getSiteFromConfig(config: Pick<PghoardConfig, "backup_sites">, site?: string): string {
  const sites = config.backup_sites && typeof config.backup_sites === "object" ? Object.keys(config.backup_sites) : [];
  if (sites.length === 0) throw new ConfigError("No backup sites defined in configuration");
  if (site === undefined || site === null) {
    if (sites.length > 1) {
      throw new ConfigError(
        `Backup site not set and configuration file defines ${sites.length} sites: ${pyReprList([...sites].sort())}`,
      );
    }
    return sites[0] as string;
  }
  if (!sites.includes(site)) {
    const others = `${sites.length} other site${sites.length > 1 ? "s" : ""}`;
    throw new ConfigError(
      `Site ${pyRepr(site)} not defined in configuration file.  ${others} are defined: ${pyReprList([...sites].sort())}`,
    );
  }
  return site;
}

export function siteObjectStorageConfig(config: PghoardConfig, site: string): ObjectStorageConfig {
  const siteConfig = config.backup_sites[site];
  if (!siteConfig) throw new ConfigError(`Site ${pyRepr(site)} not defined in configuration file`);
  return siteConfig.object_storage;
}

/** The site's key entry for `keyId`; own properties only, so `constructor` etc. never resolve. */
function encryptionKeyEntry(
  site: Pick<SiteConfig, "encryption_keys">,
  keyId: string,
): { public?: unknown; private?: unknown } | undefined {
  const keys = site.encryption_keys;
  if (!keys || !Object.prototype.hasOwnProperty.call(keys, keyId)) return undefined;
  return keys[keyId] ?? undefined;
}

/** The public PEM configured for `keyId`, or null (callers report a missing key in their own words). */
export function sitePublicKey(site: Pick<SiteConfig, "encryption_keys">, keyId: string): string | null {
  const pem = encryptionKeyEntry(site, keyId)?.public;
  return typeof pem === "string" && pem ? pem : null;
}

/** The private PEM configured for `keyId`, or null. */
export function sitePrivateKey(site: Pick<SiteConfig, "encryption_keys">, keyId: string): string | null {
  const pem = encryptionKeyEntry(site, keyId)?.private;
  return typeof pem === "string" && pem ? pem : null;
}

/** `(keyId) => private PEM`, undefined when the site has no private key for that id. */
export function privateKeyLookup(site: Pick<SiteConfig, "encryption_keys">): (keyId: string) => string | undefined {
  return (keyId) => sitePrivateKey(site, keyId) ?? undefined;
}

/** `$PGDATA/pg_wal`, or `pg_xlog` when PG_VERSION < 10 (read from disk if loadConfig did not). */
export function pgWalDirectory(site: SiteConfig): string {
  const dataDir = site.pg_data_directory;
  if (!dataDir) throw new ConfigError("pg_data_directory must be set to locate the WAL directory");
  let version = site.pg_data_directory_version;
  if (version === undefined) {
    try {
      version = readFileSync(path.join(dataDir, "PG_VERSION"), "utf8").trim();
    } catch (err) {
      throw new ConfigError(
        `cannot read ${path.join(dataDir, "PG_VERSION")}: ${(err as NodeJS.ErrnoException).code ?? err}`,
      );
    }
  }
  return path.join(dataDir, parseFloat(version) >= 10 ? "pg_wal" : "pg_xlog");
}

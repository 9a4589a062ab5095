/** Encode options of a site: compression from the top-level config, encryption from the site. */
import type { PghoardConfig, SiteConfig } from "../config/types.js";
import { sitePublicKey } from "../config/sites.js";
import type { EncodeOptions } from "../fileformat/index.js";

/**
 * `publicKeyPem` is null when the key id has no public key: each caller reports that in its own
 * words (the daemon and the basebackup modes word it differently).
 */
export function siteEncodeOptions(
  config: Pick<PghoardConfig, "compression">,
  site: Pick<SiteConfig, "encryption_key_id" | "encryption_keys">,
): EncodeOptions {
  const keyId = site.encryption_key_id || null;
  return {
    algorithm: config.compression?.algorithm ?? "snappy",
    level: config.compression?.level ?? 0,
    encryptionKeyId: keyId,
    publicKeyPem: keyId ? sitePublicKey(site, keyId) : null,
  };
}

/**
 * http-api.md §5: where a site's WAL and backups may be stored: the site itself plus the sites
 * it was moved from (or, asked for an old name, the site that moved from it and its old names).
 */
export function relatedSites(config: Pick<PghoardConfig, "backup_sites">, site: string): string[] {
  const sites = config.backup_sites;
  for (const [other, otherConfig] of Object.entries(sites)) {
    if ((otherConfig.moved_from ?? []).includes(site)) return [other, ...otherConfig.moved_from];
  }
  return [site, ...(sites[site].moved_from ?? [])];
}

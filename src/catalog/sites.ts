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

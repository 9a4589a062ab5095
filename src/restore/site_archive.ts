/**
 * Everything a site has stored, loaded once for `info` and `verify`: its basebackups (with those of
 * its `moved_from` sites), preservation requests, and the WAL chain with the newest timeline's
 * history applied. Small objects (history files) are decoded here; big ones go to the workers.
 */
import {
  latestPreservations,
  listBasebackups,
  listPreservationRequests,
  listWalArchive,
  type BasebackupEntry,
  type SiteStore,
} from "../catalog/index.js";
import { parseTimestamp } from "../common/pycompat.js";
import { privateKeyLookup } from "../config/sites.js";
import type { PghoardConfig } from "../config/types.js";
import { decodeBuffer, type PrivateKeyLookup } from "../fileformat/index.js";
import { createStorage, type ObjectStorageConfig } from "../storage/index.js";
import type { StoredObject } from "../storage/types.js";
import { RestoreError, describeError } from "./errors.js";
import { WalChain } from "./wal_chain.js";

export interface SiteArchive {
  site: string;
  /** The site's store first, then its `moved_from` stores. */
  stores: SiteStore[];
  /** Sorted by start-time (entries without one last). */
  backups: Array<BasebackupEntry & { site: string; lastModified: Date }>;
  preserveUntil: Map<string, Date>;
  chain: WalChain;
  /** Which store holds a WAL/history object. */
  storeOf: Map<StoredObject, SiteStore>;
  /** Problems met while loading (a missing or unreadable history file). */
  problems: Array<{ object: string; problem: string }>;
  /** keyId → private PEM of every site involved (for workers). */
  privateKeys: Record<string, string>;
  keys: PrivateKeyLookup;
  storageConfig(site: string): ObjectStorageConfig;
  close(): Promise<void>;
}

function siteNames(config: PghoardConfig, site: string): string[] {
  const names = [site];
  for (const moved of config.backup_sites[site].moved_from ?? []) {
    if (!config.backup_sites[moved]) {
      throw new RestoreError(`Site '${site}' has moved_from '${moved}', which is not defined in backup_sites`);
    }
    names.push(moved);
  }
  return names;
}

export async function loadSiteArchive(config: PghoardConfig, site: string): Promise<SiteArchive> {
  const names = siteNames(config, site);
  const stores: SiteStore[] = [];
  const close = async (): Promise<void> => {
    for (const s of stores) await s.storage.close().catch(() => undefined);
  };
  try {
    for (const name of names) {
      const siteConfig = config.backup_sites[name];
      stores.push({ site: name, prefix: siteConfig.prefix, storage: await createStorage(siteConfig.object_storage) });
    }
    const privateKeys: Record<string, string> = {};
    for (const name of [...names].reverse()) {
      const lookup = privateKeyLookup(config.backup_sites[name]);
      for (const keyId of Object.keys(config.backup_sites[name].encryption_keys ?? {})) {
        const pem = lookup(keyId);
        if (pem) privateKeys[keyId] = pem;
      }
    }
    const keys: PrivateKeyLookup = (id) => privateKeys[id];
    const backups = await listBasebackups(stores);
    backups.sort((a, b) => {
      const x = a.metadata["start-time"] ?? "\uffff";
      const y = b.metadata["start-time"] ?? "\uffff";
      return x < y ? -1 : x > y ? 1 : 0;
    });
    const preserveUntil = new Map<string, Date>();
    const storeOf = new Map<StoredObject, SiteStore>();
    const xlog: StoredObject[] = [];
    const timeline: StoredObject[] = [];
    for (const store of stores) {
      const requests = await listPreservationRequests(store);
      for (const [k, v] of latestPreservations(requests, (t) => new Date(parseTimestamp(t).epochMs))) {
        if (!preserveUntil.has(k) || preserveUntil.get(k)! < v) preserveUntil.set(k, v);
      }
      const listing = await listWalArchive(store);
      // The site's own store wins when a moved_from store holds the same name.
      for (const obj of [...listing.xlog, ...listing.timeline]) storeOf.set(obj, store);
      xlog.push(...listing.xlog);
      timeline.push(...listing.timeline);
    }
    const dedupe = (objs: StoredObject[]): StoredObject[] => {
      const seen = new Set<string>();
      return objs.filter((o) => {
        const base = o.name.split("/").pop()!;
        if (seen.has(base)) return false;
        seen.add(base);
        return true;
      });
    };
    const chain = new WalChain(dedupe(xlog), dedupe(timeline));
    const problems: SiteArchive["problems"] = [];
    if (chain.newestTimeline > 1) {
      const history = chain.histories.get(chain.newestTimeline);
      if (!history) {
        problems.push({
          object: `timeline/${chain.newestTimeline.toString(16).toUpperCase().padStart(8, "0")}.history`,
          problem: "missing: the timeline history of the newest timeline is not archived",
        });
      } else {
        try {
          const store = storeOf.get(history)!;
          const { data, metadata } = await store.storage.getContentsToMemory(history.name);
          chain.setHistory(await decodeBuffer(data, metadata, keys));
        } catch (err) {
          problems.push({ object: history.name, problem: describeError(err) });
        }
      }
    }
    return {
      site,
      stores,
      backups,
      preserveUntil,
      chain,
      storeOf,
      problems,
      privateKeys,
      keys,
      storageConfig: (name) => config.backup_sites[name].object_storage,
      close,
    };
  } catch (err) {
    await close();
    throw err;
  }
}

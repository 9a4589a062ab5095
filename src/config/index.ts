/** Public API of the configuration module. */
export { ConfigError } from "./errors.js";
export type * from "./types.js";
export { resolveConfigPath, loadConfig, readJsonConfigFile, type LoadOptions } from "./load.js";
export { validateConfig, type ValidateOptions } from "./validate.js";
export {
  getSiteFromConfig,
  siteObjectStorageConfig,
  privateKeyLookup,
  sitePublicKey,
  sitePrivateKey,
  pgWalDirectory,
} from "./sites.js";
export {
  parseConnectionString,
  parseNodeEntry,
  nodeConnectionInfo,
  nodeSlot,
  replicationConnectionInfo,
  createConnectionString,
  nodeConnectionString,
  writePgpassEntry,
  connectionStringUsingPgpass,
  type ConnectionInfo,
} from "./connection.js";
export {
  findPgBinary,
  parsePgCommandVersion,
  pgMajorFromNumber,
  SUPPORTED_PG_VERSIONS,
  type PgBinary,
  type PgCommand,
  type FindPgBinaryOptions,
} from "./pgbinary.js";

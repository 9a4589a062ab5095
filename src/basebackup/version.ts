/** Written into control JSON `pghoard_version` (upstream writes its own version string). */
export const PGHOARD_VERSION = "2.5.0-node";

export * from "./lsn.js";
export * from "./names.js";
export * from "./timeline.js";
export * from "./verify.js";

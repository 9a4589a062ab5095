export * from "./lsn.js";
export * from "./names.js";
export * from "./timeline.js";
export * from "./verify.js";
export * from "./segment_check.js";

// The extension API root: Firefox's promise-based `browser`, else Chrome's `chrome` (promise-based in MV3).
export const api = globalThis.browser ?? globalThis.chrome;

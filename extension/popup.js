// Loader only: the popup is Rust compiled to WebAssembly (wasm-ui/); its start function runs on init.
import init from "./pkg/sdm_popup.js";

init().catch((e) => {
  document.getElementById("notice").textContent = `The popup failed to load: ${e.message ?? e}`;
});

// Edit-Your-Motion: show the pack's warnings in the browser.
// The server sends "edit_your_motion.warning" ({message, node, prompt_id, level}) for every warning a
// user must see (sizes cropped, a detector fallback used, frames left empty...); without this
// extension they would reach only the server console.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const EVENT = "edit_your_motion.warning";

function nodeTitle(id) {
  if (id === null || id === undefined) return "";
  const node = app.graph?.getNodeById?.(Number(id)) ?? app.graph?.getNodeById?.(id);
  return node ? (node.title || node.type || "") : "";
}

app.registerExtension({
  name: "EditYourMotion.Warnings",
  setup() {
    api.addEventListener(EVENT, ({ detail }) => {
      const message = String(detail?.message ?? detail ?? "");
      const title = nodeTitle(detail?.node);
      const summary = title ? `Edit-Your-Motion: ${title}` : "Edit-Your-Motion";
      console.warn(`${summary}: ${message}`);
      const toast = app.extensionManager?.toast;
      if (toast?.add) {
        toast.add({ severity: "warn", summary, detail: message, life: 20000 });
      }
    });
  },
});

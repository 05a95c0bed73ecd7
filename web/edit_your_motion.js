// Edit-Your-Motion's browser extension.
//
// 1. Warnings: the server sends "edit_your_motion.warning" ({message, node, prompt_id, level}) for every
//    warning a user must see (sizes cropped, a detector fallback used, frames left empty...); without
//    this extension they would reach only the server console. Each is shown as a toast.
// 2. The saved view of the pack's workflows: the frontend restores a workflow's saved view (extra.ds)
//    when it is dropped or opened as a file, but fits the whole graph into the window when it is opened
//    from the template browser; for these wide graphs that is a zoom at which the canvas draws nodes as
//    blank boxes. A workflow whose extra.edit_your_motion.open_at_saved_view is true opens at its saved
//    view however it is opened (only such workflows: the pack's and copies saved from them).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const EVENT = "edit_your_motion.warning";

function nodeTitle(id) {
  if (id === null || id === undefined) return "";
  const node = app.graph?.getNodeById?.(Number(id)) ?? app.graph?.getNodeById?.(id);
  return node ? (node.title || node.type || "") : "";
}

function savedView(graph) {
  const extra = graph?.extra;
  const ds = extra?.ds;
  if (!extra?.edit_your_motion?.open_at_saved_view || !ds) return null;
  const scale = Number(ds.scale);
  const offset = Array.isArray(ds.offset) ? ds.offset.map(Number) : null;
  if (!(scale > 0) || !offset || offset.length !== 2 || offset.some((v) => !Number.isFinite(v))) return null;
  return { scale, offset };
}

function restoreView(view) {
  const canvas = app.canvas;
  if (!canvas?.ds) return;
  canvas.ds.scale = view.scale;
  canvas.ds.offset = [view.offset[0], view.offset[1]];
  canvas.setDirty?.(true, true);
}

app.registerExtension({
  name: "EditYourMotion",
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
  afterConfigureGraph() {
    const view = savedView(app.graph);
    if (!view) return;
    // the frontend fits the view after configuring (sometimes on the next frame): restore after it
    restoreView(view);
    requestAnimationFrame(() => requestAnimationFrame(() => restoreView(view)));
    setTimeout(() => restoreView(view), 250);
  },
});

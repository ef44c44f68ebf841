// Save PuLID-Flux ID: after a run, show the saved file name (the node's "text" UI output) on the node.
// Drawn on the canvas only: the name is not a widget, so it never enters the saved workflow.
import { app } from "../../scripts/app.js";

const NODE = "PuLIDFluxID_SaveID";
const LINE = 18;

app.registerExtension({
  name: "PuLIDFluxID.SaveIDName",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== NODE) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      onExecuted?.apply(this, arguments);
      const text = Array.isArray(output?.text) ? output.text.join(" ") : "";
      if (!text) return;
      const grow = this.pulidSavedAs === undefined ? LINE : 0;
      this.pulidSavedAs = "saved: " + text;
      this.setSize([Math.max(this.size[0], 7 * this.pulidSavedAs.length + 20), this.size[1] + grow]);
      this.setDirtyCanvas?.(true, true);
    };
    const onDrawForeground = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx) {
      onDrawForeground?.apply(this, arguments);
      if (!this.pulidSavedAs || this.flags?.collapsed) return;
      ctx.save();
      ctx.font = "12px sans-serif";
      ctx.fillStyle = "#9c9";
      ctx.fillText(this.pulidSavedAs, 10, this.size[1] - 6);
      ctx.restore();
    };
  },
});

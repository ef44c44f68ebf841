// After a run, draw a node's one-line text UI output on the node: Save PuLID-Flux ID shows the saved file
// name, Face Similarity its summary. Drawn on the canvas only: the text is not a widget, so it never enters
// the saved workflow.
import { app } from "../../scripts/app.js";

const PREFIX = { PuLIDFluxID_SaveID: "saved: ", PuLIDFluxID_FaceSimilarity: "" };  // node id -> line prefix
const LINE = 18;

app.registerExtension({
  name: "PuLIDFluxID.NodeText",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!(nodeData.name in PREFIX)) return;
    const prefix = PREFIX[nodeData.name];
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      onExecuted?.apply(this, arguments);
      const text = Array.isArray(output?.text) ? output.text.join(" ") : "";
      if (!text) return;
      const grow = this.pulidText === undefined ? LINE : 0;
      this.pulidText = prefix + text;
      this.setSize([Math.max(this.size[0], 7 * this.pulidText.length + 20), this.size[1] + grow]);
      this.setDirtyCanvas?.(true, true);
    };
    const onDrawForeground = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx) {
      onDrawForeground?.apply(this, arguments);
      if (!this.pulidText || this.flags?.collapsed) return;
      ctx.save();
      ctx.font = "12px sans-serif";
      ctx.fillStyle = "#9c9";
      ctx.fillText(this.pulidText, 10, this.size[1] - 6);
      ctx.restore();
    };
  },
});

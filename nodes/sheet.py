"""PuLID-Flux Likeness Sheet: a weight sweep as one contact sheet + a chart of likeness against weight."""

from __future__ import annotations

import comfy.model_management as mm
import torch
from comfy_api.latest import io

from ..encoders.image import to_rgb_uint8
from ..likeness import sheet
from ..pulid.fusion import parse_numbers
from .types import CATEGORY


def _as_tensor(array) -> torch.Tensor:
    return (torch.from_numpy(array.copy()).float() / 255.0).unsqueeze(0).to(mm.intermediate_device())


class LikenessSheet(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PuLIDFluxID_LikenessSheet",
            display_name="PuLID-Flux Likeness Sheet",
            category=CATEGORY,
            description="Draws a weight sweep: every image with its weight, start step and similarity under it, "
                        "and a chart of similarity against weight (one line per start step).",
            inputs=[
                io.Image.Input("images", tooltip="The sweep's images as one batch, in the order of the weights."),
                io.String.Input("similarities", force_input=True,
                                tooltip="From the Face Similarity node's 'similarities' output (batch order)."),
                io.String.Input("weights", default="0.5, 1.0, 1.5",
                                tooltip="The Apply weight of each image, comma-separated in batch order."),
                io.String.Input("start_steps", default="0",
                                tooltip="The Apply start_step of each image in batch order (one value = all)."),
                io.Int.Input("columns", default=0, min=0, max=64, tooltip="Tiles per row; 0 = about square."),
            ],
            outputs=[io.Image.Output(display_name="sheet", tooltip="The contact sheet."),
                     io.Image.Output(display_name="chart", tooltip="Similarity against weight.")],
        )

    @classmethod
    def execute(cls, images, similarities, weights, start_steps, columns) -> io.NodeOutput:
        n = images.shape[0]
        sims = parse_numbers(similarities, n, "similarities")
        ws = parse_numbers(weights, n, "weights", broadcast=True)
        starts = parse_numbers(start_steps, n, "start_steps", broadcast=True)
        rgbs = [to_rgb_uint8(images[i], i) for i in range(n)]
        captions = [(f"weight {w:g}   start {s:g}", f"similarity {v:.3f}") for w, s, v in zip(ws, starts, sims)]
        drawn = sheet.contact_sheet(rgbs, captions, columns)
        chart = sheet.likeness_chart(ws, sims, starts)
        return io.NodeOutput(_as_tensor(drawn), _as_tensor(chart))

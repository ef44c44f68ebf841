"""Apply PuLID-Flux: MODEL + PuLID model + ID -> a patched MODEL clone (the PuLID handle's `apply`)."""

from __future__ import annotations

from comfy_api.latest import io

from ..integration.cfg import DEFAULT_CFG_START_STEP
from ..integration.patch import UNCOND_MODES
from .types import CATEGORY, Identity, PulidModel


class Apply(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PuLIDFluxID_Apply",
            display_name="PuLID-Flux Apply ID",
            category=CATEGORY,
            description="Adds the identity to a Flux.1 or Chroma model through ComfyUI's block-replace patches, on a "
                        "clone (the input MODEL is left untouched). Chain two of them with masks for two people.",
            inputs=[
                io.Model.Input("model", tooltip="A Flux.1 (dev / Krea-dev / schnell / Kontext) or Chroma diffusion "
                                                "model of the size the PuLID file was made for (19 + 38 blocks, "
                                                "width 3072); on Chroma use true CFG with uncond_id."),
                PulidModel.Input("pulid", tooltip="From 'PuLID-Flux Load Model'; must be the model the ID was "
                                                  "encoded with."),
                Identity.Input("identity", tooltip="From 'PuLID-Flux Encode ID' or 'PuLID-Flux Load ID'."),
                io.Float.Input("weight", default=1.0, min=-1.0, max=5.0, step=0.05,
                               tooltip="Strength of the identity: 1 is the official default (its demo offers "
                                       "0-3); 0 returns the model unchanged. Negative values push the face away "
                                       "from the reference: not an official setting, for experiments."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Where on the model's noise scale the ID starts (0 = from the noisiest "
                                       "step, also for custom schedules starting above sigma 1), read from the "
                                       "sampling in force, ModelSamplingFlux included. A noise level, not a step: "
                                       "with two samplers or denoise < 1 it means the same noise levels. The ID "
                                       "runs on a step only when the step is inside this window AND at or after "
                                       "start_step."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Where on the model's noise scale the ID stops (1 = through the last "
                                       "step). Combined with start_step: both must let a step through."),
                io.Int.Input("start_step", default=0, min=0, max=10000,
                             tooltip="The official 'timestep to start inserting ID': no ID before this step "
                                     "index (official: 4 for photoreal prompts, 0-1 for stylised ones; higher = "
                                     "more pose/style freedom, less likeness). Applies together with "
                                     "start/end_percent: a step needs both. Counted from "
                                     "the first step of each sampler: with two samplers (or denoise < 1) every "
                                     "sampler starts again at 0."),
                io.Combo.Input("uncond_mode", options=list(UNCOND_MODES), default="uncond_id",
                               tooltip="Only at cfg > 1 (true CFG, with a negative prompt): what the negative branch "
                                       "gets. uncond_id = the ID encoder run on zeros (official); none = no ID; "
                                       "same = the ID as well. Fake CFG (cfg 1) is unaffected."),
                io.Int.Input("cfg_start_step", default=DEFAULT_CFG_START_STEP, min=0, max=10000, optional=True,
                             tooltip="Only at cfg > 1 (true CFG): no negative pass before this step; the positive "
                                     "prediction alone is used there (official timestep_to_start_cfg, default 1). "
                                     "0 = ComfyUI's CFG on every step. Counted per sampler (split sampling: from "
                                     "each sampler's first step). No effect at cfg 1 or weight 0."),
                io.Mask.Input("attn_mask", optional=True,
                              tooltip="Optional MASK: the ID only acts where the mask is > 0 (any resolution; "
                                      "one mask or one per latent batch item)."),
            ],
            outputs=[io.Model.Output(display_name="MODEL")],
        )

    @classmethod
    def execute(cls, model, pulid, identity, weight, start_percent, end_percent, start_step, uncond_mode,
                attn_mask=None, cfg_start_step=DEFAULT_CFG_START_STEP) -> io.NodeOutput:
        return io.NodeOutput(pulid.apply(model, identity, cfg_start_step, weight=weight, start_percent=start_percent,
                                         end_percent=end_percent, start_step=start_step, uncond_mode=uncond_mode,
                                         mask=attn_mask))

"""diffusers' real FluxTransformer2DModel / FluxPipeline for the adapter tests: the golden tiny Flux converted
with diffusers' own BFL-to-diffusers converter, and tiny random pipelines built locally (no downloads)."""

from __future__ import annotations

import torch
from conftest import import_pack

import_pack()
from comfyui_pulid_flux.pulid.model import CA_PREFIX, PulidFluxModel  # noqa: E402


def golden_transformer_config(g) -> dict:
    """FluxTransformer2DModel arguments from a Flux golden's flux_params (diffusers fixes mlp_ratio 4, theta 1e4
    and qkv biases: asserted, not assumed)."""
    p = g.meta["flux_params"]
    assert (p["mlp_ratio"], p["theta"], p["qkv_bias"]) == (4.0, 10000, True), p
    return dict(patch_size=1, in_channels=p["in_channels"], num_layers=p["depth"],
                num_single_layers=p["depth_single_blocks"], attention_head_dim=p["hidden_size"] // p["num_heads"],
                num_attention_heads=p["num_heads"], joint_attention_dim=p["context_in_dim"],
                pooled_projection_dim=p["vec_in_dim"], guidance_embeds=p["guidance_embed"],
                axes_dims_rope=tuple(p["axes_dim"]))


def convert_golden_flux(g) -> tuple[dict, dict]:
    """(diffusers state dict, leftover non-Flux keys) via diffusers.loaders.single_file_utils'
    convert_flux_transformer_checkpoint_to_diffusers.

    That converter hard-codes Flux.1's width (inner_dim 3072, mlp_ratio 4) for the one fused tensor it splits by
    size, single_blocks.N.linear1 (q, k, v, mlp stacked on rows). The tiny rows are laid into that full-width row
    layout (zeros elsewhere) so the converter runs unchanged, and its outputs are cropped back to the tiny width."""
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    p = g.meta["flux_params"]
    hidden, mlp, full = p["hidden_size"], int(p["hidden_size"] * p["mlp_ratio"]), 3072
    ckpt = {k: v.clone() for k, v in g.weights.items()}
    tiny_rows = {f"single_blocks.{i}.linear1.{kind}" for i in range(p["depth_single_blocks"])
                 for kind in ("weight", "bias")}
    for key in tiny_rows:
        t = ckpt[key]
        wide = t.new_zeros((3 * full + int(full * p["mlp_ratio"]),) + t.shape[1:])
        for part in range(3):
            wide[part * full:part * full + hidden] = t[part * hidden:(part + 1) * hidden]
        wide[3 * full:3 * full + mlp] = t[3 * hidden:]
        ckpt[key] = wide
    converted = convert_flux_transformer_checkpoint_to_diffusers(ckpt)
    for i in range(p["depth_single_blocks"]):
        pre = f"single_transformer_blocks.{i}."
        for name, rows in (("attn.to_q", hidden), ("attn.to_k", hidden), ("attn.to_v", hidden), ("proj_mlp", mlp)):
            for kind in ("weight", "bias"):
                converted[pre + f"{name}.{kind}"] = converted[pre + f"{name}.{kind}"][:rows].clone()
    return converted, ckpt  # the converter pops what it converts: ckpt keeps the rest (pulid_ca.*)


def golden_transformer(g):
    from diffusers import FluxTransformer2DModel

    sd, rest = convert_golden_flux(g)
    model = FluxTransformer2DModel(**golden_transformer_config(g))
    model.load_state_dict(sd, strict=True)
    assert sorted({k.split(".")[0] for k in rest}) == ["pulid_ca"], sorted(rest)[:5]
    return model.eval().requires_grad_(False)


def golden_pulid_model(g, idformer_golden) -> PulidFluxModel:
    """The golden CA modules (constructor from the flux sidecar) with the idformer golden's encoder (constructor and
    substituted widths from its sidecar, as _golden_models.build_idformer)."""
    from _golden_models import build_idformer

    c = dict(g.meta["pulid_ca_constructor"])
    c.pop("class")
    count = c.pop("count")
    encoder = build_idformer(idformer_golden)
    args = {k: getattr(encoder, k) for k in ("dim", "num_id_token", "num_queries", "output_dim", "id_in_dim",
                                             "vit_dim", "num_vit_taps")}
    e = dict(idformer_golden.meta["constructor"])
    args.update(depth=e["depth"], dim_head=e["dim_head"], heads=e["heads"], ff_mult=e["ff_mult"],
                mapping_hidden=encoder.mapping_0[0].out_features)
    m = PulidFluxModel(args, c, count)
    m.pulid_encoder.load_state_dict(encoder.state_dict(), strict=True)
    m.pulid_ca.load_state_dict({k[len(CA_PREFIX):]: v for k, v in g.weights.items() if k.startswith(CA_PREFIX)},
                               strict=True)
    return m.eval().requires_grad_(False)


def flux_scheduler():
    """FlowMatchEulerDiscreteScheduler as FLUX.1-dev's scheduler_config.json sets it up."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                           base_image_seq_len=256, max_image_seq_len=4096)


class StubTokenizer:
    """Tokenizer stand-in for FluxPipeline.encode_prompt: ids of the requested length (the stub encoders ignore
    them)."""

    model_max_length = 77
    added_tokens_encoder: dict = {}

    def __call__(self, text, max_length=1, **kwargs):
        from types import SimpleNamespace

        n = 1 if isinstance(text, str) else len(text)
        return SimpleNamespace(input_ids=torch.zeros(n, max_length, dtype=torch.long))

    def tokenize(self, text):
        return [text]

    def batch_decode(self, ids):
        return [""] * len(ids)


class StubEncoder(torch.nn.Module):
    """Text encoder stand-in returning fixed embeddings: CLIP's pooler_output (pooled=True) or T5's hidden states."""

    def __init__(self, value: torch.Tensor, pooled: bool):
        super().__init__()
        self.register_buffer("value", value.clone())
        self.pooled = pooled

    @property
    def dtype(self):
        return self.value.dtype

    @property
    def device(self):
        return self.value.device

    def forward(self, ids, output_hidden_states=False):
        from types import SimpleNamespace

        out = self.value.expand(ids.shape[0], *self.value.shape[1:])
        return SimpleNamespace(pooler_output=out) if self.pooled else (out,)

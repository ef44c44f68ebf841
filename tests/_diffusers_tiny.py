"""A tiny FluxPipeline with random weights built locally (tiny CLIP + T5 from transformers configs, word-level
tokenizers, a tiny VAE; no download) and a tiny PuLID model for it.

Standalone (no conftest): the fresh-venv install test runs this file as a script against the installed
``pulid_flux_id`` (``python _diffusers_tiny.py EXAMPLE``: runs the example's ``generate`` and prints ``OK``)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

try:
    import pulid_flux_id  # noqa: F401  (installed: the library)
except ImportError:  # the checkout, under the library's import name (as conftest imports it as the pack)
    _root = Path(__file__).resolve().parent.parent
    _spec = importlib.util.spec_from_file_location("pulid_flux_id", _root / "__init__.py",
                                                   submodule_search_locations=[str(_root)])
    sys.modules["pulid_flux_id"] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules["pulid_flux_id"])

TINY_TRANSFORMER = dict(patch_size=1, in_channels=16, num_layers=3, num_single_layers=5, attention_head_dim=16,
                        num_attention_heads=2, joint_attention_dim=24, pooled_projection_dim=16, guidance_embeds=True,
                        axes_dims_rope=(4, 6, 6))
TINY_ENCODER = dict(dim=32, depth=2, dim_head=8, heads=4, num_id_token=2, num_queries=8, output_dim=32, ff_mult=2,
                    id_in_dim=24, vit_dim=16, mapping_hidden=24, num_vit_taps=1)


def _randomize(module: torch.nn.Module, seed: int, scale: float) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return module.eval().requires_grad_(False)


def tiny_transformer(seed: int = 0, **overrides):
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    return FluxTransformer2DModel(**{**TINY_TRANSFORMER, **overrides}).eval().requires_grad_(False)


def tiny_pulid_model(transformer, seed: int = 1, dtype=torch.float32):
    """PulidFluxModel with one CA per hooked block of `transformer` (pulid/config.py ca_layout)."""
    from pulid_flux_id.pulid.config import ca_layout
    from pulid_flux_id.pulid.model import PulidFluxModel

    cfg = transformer.config
    layout = ca_layout(cfg.num_layers, cfg.num_single_layers)
    ca = dict(dim=cfg.num_attention_heads * cfg.attention_head_dim, dim_head=16, heads=4,
              kv_dim=TINY_ENCODER["output_dim"])
    return _randomize(PulidFluxModel(TINY_ENCODER, ca, layout.num_ca), seed, 0.2).to(dtype)


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<unk>", "</s>", "a", "portrait", "photo", "of", "person", "bad", "quality", "blurry", "smiling"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="</s>",
                                   model_max_length=77)


def tiny_pipeline(transformer=None, seed: int = 0):
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    transformer = transformer if transformer is not None else tiny_transformer(seed)
    cfg = transformer.config
    torch.manual_seed(seed + 1)
    clip = CLIPTextModel(CLIPTextConfig(hidden_size=cfg.pooled_projection_dim, intermediate_size=32,
                                        num_hidden_layers=1, num_attention_heads=2, vocab_size=64,
                                        max_position_embeddings=77, projection_dim=cfg.pooled_projection_dim,
                                        eos_token_id=2, pad_token_id=0, bos_token_id=2)).eval()
    t5 = T5EncoderModel(T5Config(d_model=cfg.joint_attention_dim, d_ff=32, d_kv=8, num_layers=1, num_heads=2,
                                 vocab_size=64, relative_attention_num_buckets=8)).eval()
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
                        latent_channels=cfg.in_channels // 4, norm_num_groups=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609,
                        scaling_factor=1.5035).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    return FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=_tokenizer(), text_encoder_2=t5,
                        tokenizer_2=_tokenizer(), transformer=transformer)


def tiny_identity(pulid_model, n: int = 1, seed: int = 2):
    """An IDEmbedding of n random identities, with the uncond ID, shaped for pulid_model."""
    from pulid_flux_id.pulid.embedding import IDEmbedding

    g = torch.Generator().manual_seed(seed)
    enc = pulid_model.pulid_encoder
    with torch.no_grad():
        tokens = enc(torch.randn(n, enc.id_in_dim, generator=g),
                     [torch.randn(n, 5, enc.vit_dim, generator=g) for _ in range(enc.num_vit_taps)])
        uncond = enc.uncond_id(5)
    return IDEmbedding(tokens=tokens.float(), uncond=uncond.float())


if __name__ == "__main__":  # the fresh-venv check: the example's generate() on the tiny pipeline
    spec = importlib.util.spec_from_file_location("example", sys.argv[1])
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    pipe = tiny_pipeline()
    pm = tiny_pulid_model(pipe.transformer)
    images = example.generate(pipe, pm, tiny_identity(pm), "a portrait photo of a person", negative_prompt="blurry",
                              true_cfg_scale=2.0, num_inference_steps=2, height=64, width=64, output_type="pt")
    assert torch.isfinite(images).all() and "comfy" not in sys.modules
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in pipe.transformer.modules())
    sys.stdout.write("OK\n")

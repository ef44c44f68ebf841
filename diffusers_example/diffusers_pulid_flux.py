"""PuLID-Flux with diffusers' FluxPipeline: an identity from a face photo (or a saved ID file, e.g. from
ComfyUI's Save ID node), generated with the official settings.

    pip install "pulid-flux-id[diffusers]"   # or: pip install "<checkout>[diffusers]"
    python diffusers_pulid_flux.py --pulid pulid_flux_v0.9.1.safetensors --face me.jpg \\
        --antelopev2 models/insightface/models/antelopev2 --facexlib models/facexlib \\
        --eva-clip EVA02_CLIP_L_336_psz14_s6B.pt --prompt "portrait, color, cinematic" --out out.png

Photoreal: --start-step 4. True CFG (official recipe): --guidance 1 --true-cfg 5 --start-step 1 --negative "...".
"""

from __future__ import annotations

import argparse

import torch
from pulid_flux_id.diffusers_pulid import attach, encode_images, load_id, load_pulid_model, save_id


def generate(pipe, pulid_model, identity, prompt, *, id_weight=1.0, start_step=0, timestep_to_start_cfg=1,
             mask=None, **pipe_kwargs):
    """pipe(prompt, **pipe_kwargs) with the identity attached; the transformer is restored afterwards."""
    with attach(pipe.transformer, pulid_model, identity, id_weight=id_weight, start_step=start_step,
                timestep_to_start_cfg=timestep_to_start_cfg, mask=mask):
        return pipe(prompt, **pipe_kwargs).images


def main() -> None:
    from diffusers import FluxPipeline
    from PIL import Image

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flux", default="black-forest-labs/FLUX.1-dev")
    ap.add_argument("--pulid", required=True, help="pulid_flux_v0.9.1.safetensors")
    ap.add_argument("--face", help="a face photo (needs --antelopev2, --facexlib, --eva-clip)")
    ap.add_argument("--id-file", help="an ID saved by ComfyUI's Save ID node (instead of --face)")
    ap.add_argument("--save-id", help="write the encoded ID here (ComfyUI's Load ID reads it)")
    ap.add_argument("--antelopev2")
    ap.add_argument("--facexlib")
    ap.add_argument("--eva-clip")
    ap.add_argument("--prompt", default="portrait, color, cinematic")
    ap.add_argument("--negative", default="bad quality, worst quality, text, signature, watermark, extra limbs")
    ap.add_argument("--id-weight", type=float, default=1.0)
    ap.add_argument("--start-step", type=int, default=0)
    ap.add_argument("--guidance", type=float, default=4.0)
    ap.add_argument("--true-cfg", type=float, default=1.0)
    ap.add_argument("--steps", type=int, default=28)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="pulid_flux.png")
    args = ap.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = FluxPipeline.from_pretrained(args.flux, torch_dtype=torch.bfloat16)
    pipe.enable_model_cpu_offload() if device == "cuda" else pipe.to(device)
    pulid_model = load_pulid_model(args.pulid, device=device, dtype=torch.bfloat16)
    if args.id_file:
        identity = load_id(args.id_file)
    else:
        identity = encode_images(pulid_model, Image.open(args.face), antelopev2_dir=args.antelopev2,
                                 facexlib_dir=args.facexlib, eva_clip_file=args.eva_clip, device=device)
    if args.save_id:
        save_id(identity, args.save_id)
    image = generate(pipe, pulid_model, identity, args.prompt, id_weight=args.id_weight, start_step=args.start_step,
                     negative_prompt=args.negative if args.true_cfg > 1 else None, true_cfg_scale=args.true_cfg,
                     guidance_scale=args.guidance, num_inference_steps=args.steps,
                     generator=torch.Generator("cpu").manual_seed(args.seed))[0]
    image.save(args.out)


if __name__ == "__main__":
    main()

"""PuLID with ComfyUI's own nodes in real sampling graphs (tiny random Flux on CPU, both ComfyUI versions).

Each graph is built from core's real node classes (comfy_extras, nodes.py) executed in-process, with the
PuLID Apply node placed before or after the other node. `_compat.check_combination` asserts: it samples,
PuLID has an effect, weight 0 and an inactive window are bit-identical to the graph without PuLID, and the
plain graph sampled afterwards equals the fresh one.
"""

from __future__ import annotations

import pytest
import torch
from conftest import COMFYUI_ROOT, NO_COMFYUI, setup_comfyui

if COMFYUI_ROOT is None:
    pytest.skip(NO_COMFYUI, allow_module_level=True)
setup_comfyui()

import _compat as C  # noqa: E402
import _tiny_flux as T  # noqa: E402

ORDERS = ["pulid_first", "pulid_last"]


base, kit = C.base, C.kit  # the shared module-scoped fixtures (tests/_compat.py)


def chain(model, pulid, other, order: str):
    """model -> [PuLID] -> other -> [PuLID]: PuLID (if any) on the side `order` names."""
    if pulid is not None and order == "pulid_first":
        model = pulid(model)
    model = other(model)
    if pulid is not None and order == "pulid_last":
        model = pulid(model)
    return model


# --------------------------------------------------------------------------------------- step caches
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("node", ["EasyCacheNode", "LazyCacheNode"])
def test_core_step_cache(base, kit, node, order):
    import comfy_extras.nodes_easycache as ec

    cls = getattr(ec, node)
    steps = 8

    def cache(m):
        return C.run_node(cls, model=m, reuse_threshold=0.2, start_percent=0.15, end_percent=0.95, verbose=False)[0]

    def graph(pulid):
        return T.sample(chain(base, pulid, cache, order), steps=steps)

    C.check_combination(graph, kit)
    kit.log.clear()
    T.sample(chain(base, C.pulid_step(kit), cache, order), steps=steps)
    first_ca = kit.attends(0)
    assert 0 < len(first_ca) < steps, f"{node} skipped no step ({len(first_ca)} of {steps} computed): test too weak"


# --------------------------------------------------------------------------------------- LoRA
@pytest.fixture(scope="module")
def tiny_lora(base, tmp_path_factory):
    """A Flux LoRA file (diffusion_model.<layer>.lora_up/lora_down) for the tiny model, in a loras folder."""
    import folder_paths
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("loras")
    g = torch.Generator().manual_seed(7)
    sd = {}
    for name, w in base.model.diffusion_model.state_dict().items():
        if w.ndim == 2 and name.endswith(("attn.qkv.weight", "attn.proj.weight", "linear1.weight", "linear2.weight")):
            key, rank = "diffusion_model." + name[: -len(".weight")], 4
            sd[f"{key}.lora_up.weight"] = torch.randn(w.shape[0], rank, generator=g) * 0.2
            sd[f"{key}.lora_down.weight"] = torch.randn(rank, w.shape[1], generator=g) * 0.2
    assert len(sd) >= 8
    save_file(sd, str(folder / "tiny_flux_lora.safetensors"))
    folder_paths.add_model_folder_path("loras", str(folder))
    return "tiny_flux_lora.safetensors"


@pytest.mark.parametrize("order", ORDERS)
def test_flux_lora(base, kit, tiny_lora, order):
    from nodes import LoraLoaderModelOnly

    def lora(m):
        return C.run_node(LoraLoaderModelOnly, model=m, lora_name=tiny_lora, strength_model=1.0)[0]

    def graph(pulid):
        return T.sample(chain(base, pulid, lora, order), steps=3)

    assert not torch.equal(graph(None), T.sample(base, steps=3)), "the LoRA itself has no effect: test too weak"
    C.check_combination(graph, kit)
    assert torch.equal(T.sample(base, steps=3), T.sample(base.clone(), steps=3))


# --------------------------------------------------------------------------------------- schedule, guidance
@pytest.mark.parametrize("order", ORDERS)
def test_model_sampling_flux(base, kit, order):
    from comfy_extras.nodes_model_advanced import ModelSamplingFlux

    def shift(m):
        return C.run_node(ModelSamplingFlux, model=m, max_shift=3.0, base_shift=3.0, width=1024, height=1024)[0]

    C.check_combination(lambda pulid: T.sample(chain(base, pulid, shift, order), steps=3), kit)


@pytest.mark.parametrize("order", ORDERS)
def test_skip_layer_guidance_on_the_last_blocks(base, kit, order):
    from comfy_extras.nodes_slg import SkipLayerGuidanceDiT

    params = base.model.diffusion_model.params
    last_double, last_single = params.depth - 1, params.depth_single_blocks - 1
    # the tiny model has a PuLID CA after both last blocks (double 2 of 3, single 4 of 5): SLG skips them
    from comfyui_pulid_flux.pulid.config import ca_layout

    layout = ca_layout(params.depth, params.depth_single_blocks)
    assert last_double in layout.double and last_single in layout.single

    def slg(m):
        return C.run_node(SkipLayerGuidanceDiT, model=m, double_layers=str(last_double),
                          single_layers=str(last_single), scale=3.0, start_percent=0.0, end_percent=1.0,
                          rescaling_scale=0.0)[0]

    def graph(pulid):
        return T.sample(chain(base, pulid, slg, order), steps=3, cfg=2.0)

    assert not torch.equal(graph(None), T.sample(base, steps=3, cfg=2.0)), "SLG had no effect: test too weak"
    C.check_combination(graph, kit)


def _custom_sample(model, positive, negative, cfg: float, steps: int = 3):
    """CFGGuider + SamplerCustomAdvanced with RandomNoise, KSamplerSelect and BasicScheduler (core nodes)."""
    from comfy_extras.nodes_custom_sampler import (
        BasicScheduler,
        CFGGuider,
        KSamplerSelect,
        RandomNoise,
        SamplerCustomAdvanced,
    )

    guider = C.run_node(CFGGuider, model=model, positive=positive, negative=negative, cfg=cfg)[0]
    noise = C.run_node(RandomNoise, noise_seed=3)[0]
    sampler = C.run_node(KSamplerSelect, sampler_name="euler")[0]
    sigmas = C.run_node(BasicScheduler, model=model, scheduler="simple", steps=steps, denoise=1.0)[0]
    latent = {"samples": torch.zeros(1, T.TINY_FLUX["in_channels"], 4, 4)}
    out = C.run_node(SamplerCustomAdvanced, noise=noise, guider=guider, sampler=sampler, sigmas=sigmas,
                     latent_image=latent)
    return out[0]["samples"]


@pytest.mark.parametrize("uncond_mode", ["uncond_id", "none"])
def test_cfg_guider_with_a_negative(base, kit, uncond_mode):
    positive, negative = T.tiny_cond(0), T.tiny_cond(1, tokens=7)

    def graph(pulid):
        return _custom_sample(base if pulid is None else pulid(base), positive, negative, cfg=2.5)

    C.check_combination(graph, kit, uncond_mode=uncond_mode)
    kit.log.clear()
    graph(C.pulid_step(kit, uncond_mode=uncond_mode))
    att = kit.attends()
    assert len(att) == 3 * kit.pulid_model.num_ca  # one ID term per CA and step
    if uncond_mode == "uncond_id":  # cond and uncond rows in one call, each row its own ID (uncond ID, then the ID)
        both = [e for e in att if e[2] == 2]
        assert both and {len(set(e[3].tolist())) for e in both} == {2}, [e[2] for e in att]
    else:  # none: only the cond row gets an ID
        assert {e[2] for e in att} == {1}


# --------------------------------------------------------------------------------------- Kontext
def _token_probe(model, n_txt: int, n_main: int, seen: list):
    """Wrap every dit patch: the text and the reference tokens PuLID's patch returns must equal what the
    original block alone returns (the ID touches only the main image tokens)."""
    m = model.clone()
    dit = m.model_options["transformer_options"].get("patches_replace", {}).get("dit", {})
    for (kind, index), inner in list(dit.items()):
        def probe(args, extra, _inner=inner, _kind=kind):
            alone = extra["original_block"]({**args, "img": args["img"].clone(),
                                             **({"txt": args["txt"].clone()} if "txt" in args else {})})
            out = _inner(args, extra)
            if _kind == "double_block":
                assert torch.equal(out["txt"], alone["txt"]), "PuLID changed the text tokens"
                main, ref = slice(0, n_main), slice(n_main, None)
            else:
                assert torch.equal(out["img"][:, :n_txt], alone["img"][:, :n_txt]), "PuLID changed the text tokens"
                main, ref = slice(n_txt, n_txt + n_main), slice(n_txt + n_main, None)
            assert out["img"].shape[1] > main.stop, "no reference tokens in the sequence"
            assert torch.equal(out["img"][:, ref], alone["img"][:, ref]), "PuLID changed the reference tokens"
            seen.append((_kind, not torch.equal(out["img"][:, main], alone["img"][:, main])))
            return out

        m.set_model_patch_replace(probe, "dit", kind, index)
    return m


def test_kontext_reference_latent(base, kit):
    from comfy_extras.nodes_edit_model import ReferenceLatent

    reference = {"samples": torch.randn(1, T.TINY_FLUX["in_channels"], 6, 4, generator=torch.Generator().manual_seed(4))}
    positive = C.run_node(ReferenceLatent, conditioning=T.tiny_cond(0), latent=reference)[0]
    assert "reference_latents" in positive[0][1]

    def graph(pulid):
        return T.sample(base if pulid is None else pulid(base), steps=3, positive=positive)

    assert not torch.equal(graph(None), T.sample(base, steps=3)), "the reference latent had no effect"
    C.check_combination(graph, kit)
    n_main = (32 // 8 // 2) ** 2  # T.sample's 32x32 px latent: 4x4 -> 2x2 tokens
    kit.log.clear()
    seen = []
    T.sample(_token_probe(C.apply_id(base, kit), 7, n_main, seen), steps=3, positive=positive)
    assert {e[4] for e in kit.attends()} == {n_main}  # the CAs saw only the main image tokens
    assert seen and all(changed for _, changed in seen), seen


# --------------------------------------------------------------------------------------- torch.compile
def test_torch_compile_model(base, kit):
    from comfy_extras.nodes_torch_compile import TorchCompileModel

    def graph(pulid):
        m = base if pulid is None else pulid(base)
        return T.sample(C.run_node(TorchCompileModel, model=m, backend="inductor")[0], steps=2)

    # Compiled, an inactive window gives the exact plain output, but once the ID tables exist (an earlier
    # eager run in this module) the compiled graph still evaluates the ID terms outside the window
    # (reported to the sampling path's owner); only the output is the contract here.
    C.check_combination(graph, kit, idle_costs_nothing=False)


# --------------------------------------------------------------------------------------- Chroma
def test_chroma_in_a_true_cfg_graph(kit):
    """Chroma (no distilled guidance: true CFG is its normal mode) through core's CFGGuider and
    SamplerCustomAdvanced with a negative; tests/test_chroma.py covers masks, per-item IDs and refusals."""
    chroma = T.tiny_chroma_patcher()
    positive, negative = T.tiny_chroma_cond(0), T.tiny_chroma_cond(1, tokens=7)

    def graph(pulid):
        return _custom_sample(chroma if pulid is None else pulid(chroma), positive, negative, cfg=3.0)

    C.check_combination(graph, kit)
    kit.log.clear()
    graph(C.pulid_step(kit))
    both = [e for e in kit.attends() if e[2] == 2]  # the cond and the uncond row, each with its own ID
    assert both and {len(set(e[3].tolist())) for e in both} == {2}

"""Folded ID attention against the CA modules themselves: the algebra is exact (fp32 to rounding), padding
entries of other token counts cost nothing, and the bf16 error of the folded path is reported next to the
unfolded one (the official dtype is bf16)."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import import_pack

import_pack()
from comfyui_pulid_flux.pulid.fold import FoldedID, ReferenceID  # noqa: E402
from comfyui_pulid_flux.pulid.model import PulidFluxModel  # noqa: E402

log = logging.getLogger(__name__)


def golden_ca_model(golden) -> tuple[PulidFluxModel, torch.Tensor]:
    """The golden set's CA weights (flux_patched sidecar constructor) and its ID tokens."""
    g = golden("flux_patched")
    c = dict(g.meta["pulid_ca_constructor"])
    c.pop("class")
    count = c.pop("count")
    enc = dict(dim=8, depth=1, dim_head=4, heads=2, num_id_token=1, num_queries=2, output_dim=c["kv_dim"], ff_mult=1,
               id_in_dim=4, vit_dim=4, mapping_hidden=4, num_vit_taps=1)
    m = PulidFluxModel(enc, c, count)
    prefix = "pulid_ca."
    m.pulid_ca.load_state_dict({k[len(prefix):]: v for k, v in g.weights.items() if k.startswith(prefix)}, strict=True)
    return m.eval().requires_grad_(False), g.io["in.id"]


def truth(model: PulidFluxModel, ids_sets, select, img) -> list[torch.Tensor]:
    """CA(ids of each row's entry, img row) with the modules in float64."""
    cas = [ca.double() for ca in model.double().pulid_ca]
    entries = [e for ids in ids_sets for e in ids.double()]
    return [torch.stack([ca(entries[s][None], img[r:r + 1].double())[0] for r, s in enumerate(select.tolist())])
            for ca in cas]


def max_rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref).abs().max() / ref.abs().max())


@torch.no_grad()
def test_folded_is_exact_in_fp32_with_padding_and_norm_affine(golden):
    model, ids = golden_ca_model(golden)
    assert model.pulid_ca[0].norm2.bias.abs().max() > 0 and (model.pulid_ca[0].norm2.weight - 1).abs().max() > 0
    g = torch.Generator().manual_seed(0)
    uncond = torch.randn(1, ids.shape[1] - 3, ids.shape[2], generator=g)  # fewer tokens: padded entry
    id_sets = [ids, uncond]
    select = torch.tensor([0, ids.shape[0], ids.shape[0] - 1])
    img = torch.randn(3, 10, model.hidden_size, generator=g) * 3 + 1
    expected = truth(golden_ca_model(golden)[0], id_sets, select, img)  # (truth() converts its model to float64)
    for table in (FoldedID.fold(model, id_sets, torch.float32), ReferenceID.build(model, id_sets, torch.float32)):
        for k, exp in enumerate(expected):
            out = table.residual(k, img, select)
            assert out.dtype == torch.float32
            torch.testing.assert_close(out.double(), exp, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@torch.no_grad()
def test_folded_vs_unfolded_error_is_reported(golden, dtype):
    model, ids = golden_ca_model(golden)
    g = torch.Generator().manual_seed(1)
    img = torch.randn(ids.shape[0], 64, model.hidden_size, generator=g)
    select = torch.arange(ids.shape[0])
    expected = truth(golden_ca_model(golden)[0], [ids], select, img)
    low = model.to(dtype)
    folded = FoldedID.fold(low, [ids], dtype)
    reference = ReferenceID.build(low, [ids], dtype)
    errors = {"folded": [], "unfolded": [], "folded_vs_unfolded": []}
    for k, exp in enumerate(expected):
        f, r = folded.residual(k, img, select), reference.residual(k, img, select)
        assert f.dtype == r.dtype == dtype
        errors["folded"].append(max_rel(f, exp))
        errors["unfolded"].append(max_rel(r, exp))
        errors["folded_vs_unfolded"].append(max_rel(f, r.double()))
    worst = {name: max(v) for name, v in errors.items()}
    log.warning("%s: max relative error vs float64 truth: folded %.3g, unfolded %.3g; folded vs unfolded %.3g",
                dtype, worst["folded"], worst["unfolded"], worst["folded_vs_unfolded"])
    if dtype == torch.float32:
        assert worst["folded"] < 1e-5 and worst["folded_vs_unfolded"] < 1e-5
    else:  # folding in fp32 and storing in bf16 is no less accurate than running the bf16 CA modules
        assert worst["folded"] <= 1.5 * worst["unfolded"]

"""Folded ID attention against the CA modules themselves: the algebra is exact (fp32 to rounding), padding
entries of other token counts cost nothing, the bf16 error of the folded path (fp32 logits) stays within the
golden bf16 bound; the cost model matches counted MACs and picks the form; tables are cast, never refused,
wherever ComfyUI left them; the table cache is keyed by device."""

from __future__ import annotations

import logging

import pytest
import torch
from _golden_models import ca_forward
from conftest import bf16_bound, import_pack, rel_l2
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import_pack()
from comfyui_pulid_flux.pulid import fold  # noqa: E402
from comfyui_pulid_flux.pulid.config import FLUX_DEV  # noqa: E402
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
    return [torch.stack([ca_forward(ca, entries[s][None], img[r:r + 1].double())[0]
                         for r, s in enumerate(select.tolist())])
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
    else:  # folding in fp32, storing in bf16 and keeping the logits in fp32: no less accurate than the bf16 CAs
        assert worst["folded"] <= 1.5 * worst["unfolded"]
        for k, exp in enumerate(expected):
            err = rel_l2(exp, folded.residual(k, img, select))
            assert err <= bf16_bound("perceiver_ca_bf16_vs_fp32"), (k, err)


def _tiny_model(tokens_dim: int = 32, heads: int = 4, dim_head: int = 16, dim: int = 64, num_ca: int = 3):
    enc = dict(dim=8, depth=1, dim_head=4, heads=2, num_id_token=1, num_queries=2, output_dim=tokens_dim, ff_mult=1,
               id_in_dim=4, vit_dim=4, mapping_hidden=4, num_vit_taps=1)
    m = PulidFluxModel(enc, dict(dim=dim, kv_dim=tokens_dim, dim_head=dim_head, heads=heads), num_ca)
    g = torch.Generator().manual_seed(3)
    for p in m.parameters():
        p.data = torch.randn(p.shape, generator=g) * 0.2
    return m.eval().requires_grad_(False)


@pytest.mark.parametrize("tokens", [8, 40])
def test_cost_is_the_counted_macs_per_image_token(tokens):
    """fold.cost against torch's FLOP counter on both residuals (2 FLOPs per multiply-accumulate)."""
    m = _tiny_model()
    ids, img = torch.randn(1, tokens, 32), torch.randn(1, 16, 64)
    counted = []
    for table in (FoldedID.fold(m, [ids], torch.float32), ReferenceID.build(m, [ids], torch.float32)):
        with FlopCounterMode(display=False) as fc, sdpa_kernel(SDPBackend.MATH):  # MATH: counted as two bmm
            for k in range(m.num_ca):
                table.residual(k, img, None)
        counted.append(fc.get_total_flops() // 2 // img.shape[1])
    assert fold.cost(m, tokens) == tuple(counted)


def test_the_cheaper_form_is_chosen_from_t_134_at_full_size():
    """At full size (20 CAs, width 3072, 16 x 128 heads) the unfolded form is cheaper from 134 ID tokens on
    (docs/design.md, "Folding"): one reference is folded, five concatenated ones are not."""
    with torch.device("meta"):
        full = PulidFluxModel.from_config(FLUX_DEV)
    ca = full.pulid_ca[0]
    inner = ca.heads * ca.dim_head
    edge = ca.dim * inner / (ca.dim * ca.heads - inner)  # 2·dim·H·T = 2·dim·inner + 2·inner·T
    assert 133 < edge < 134
    assert fold.choose_folded(full, 133) and not fold.choose_folded(full, 134)
    assert fold.choose_folded(full, FLUX_DEV.num_id_queries) and not fold.choose_folded(full, 5 * FLUX_DEV.num_id_queries)


def test_apply_picks_the_form_by_cost_unless_told(comfyui):
    from _tiny_flux import pulid_patcher

    m = _tiny_model()
    pulid = pulid_patcher(m)
    few, many = torch.randn(1, 8, 32), torch.randn(1, 40, 32)  # tiny edge: 64·64 / (64·4 - 64) = 21.3 tokens
    assert isinstance(fold.prepare_id(pulid, few, None).table, FoldedID)
    assert isinstance(fold.prepare_id(pulid, many, None).table, ReferenceID)
    assert isinstance(fold.prepare_id(pulid, many, None, folded=True).table, FoldedID)
    assert isinstance(fold.prepare_id(pulid, few, None, folded=False).table, ReferenceID)


@pytest.mark.parametrize("build", [FoldedID.fold, ReferenceID.build], ids=["folded", "unfolded"])
@torch.no_grad()
def test_a_table_left_in_another_dtype_is_cast_not_refused(build):
    m = _tiny_model().to(torch.bfloat16)
    ids, img = torch.randn(2, 8, 32), torch.randn(2, 16, 64)
    table = build(m, [ids], torch.bfloat16)
    want = [table.residual(k, img, torch.tensor([1, 0])) for k in range(m.num_ca)]
    table.float()  # e.g. ComfyUI moved or cast the patcher's weights
    assert table.weight_device == torch.device("cpu") and table.compute_dtype == torch.bfloat16
    for k in range(m.num_ca):
        out = table.residual(k, img, torch.tensor([1, 0]))
        assert out.dtype == torch.bfloat16 and torch.equal(out, want[k])


def test_the_table_cache_is_keyed_by_device(comfyui):
    from _tiny_flux import pulid_patcher

    pulid = pulid_patcher(_tiny_model())
    ids = torch.randn(1, 8, 32)
    cpu = fold.prepare_id(pulid, ids, None, device=torch.device("cpu"))
    assert fold.prepare_id(pulid, ids, None, device=torch.device("cpu")) is cpu
    assert cpu.patcher.load_device == torch.device("cpu")
    other = fold.prepare_id(pulid, ids, None, device="cpu:1")  # another device of the same type: its own entry
    assert other is not cpu and other.patcher.load_device == "cpu:1"
    assert torch.equal(other.table.a, cpu.table.a)

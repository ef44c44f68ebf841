"""Golden parity of the PuLID core (IDFormer, PerceiverAttentionCA) against the official code.

Every constructor argument and every shape comes from the golden sidecar JSON.
"""

from __future__ import annotations

import pytest
import torch
from _golden_models import build_ca, build_idformer, ca_forward
from conftest import bf16_bound, rel_l2

ATOL, RTOL = 1e-5, 1e-4  # fp32 parity with the official modules


@torch.no_grad()
def test_idformer_matches_official(golden):
    g = golden("idformer")
    m = build_idformer(g)
    out = m(g.io["in.id_cond"], g.seq("in.id_vit_hidden"))
    assert out.shape == g.io["out.id_embedding"].shape
    torch.testing.assert_close(out, g.io["out.id_embedding"], atol=ATOL, rtol=RTOL)


@torch.no_grad()
def test_idformer_uncond_is_encoder_on_zeros(golden):
    g = golden("idformer")
    m = build_idformer(g)
    ref = g.io["out.uncond_id_embedding"]
    num_tokens = g.seq("in.id_vit_hidden")[0].shape[1]
    out = m.uncond_id(num_tokens, batch=ref.shape[0])
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL)
    assert out.abs().max() > 0  # not a zero embedding


@torch.no_grad()
def test_idformer_multi_image_path(golden):
    g = golden("idformer")
    m = build_idformer(g)
    out = m(g.io["in.id_cond_3d"], g.seq("in.id_vit_hidden"))
    torch.testing.assert_close(out, g.io["out.id_embedding_3d"], atol=ATOL, rtol=RTOL)


@torch.no_grad()
@pytest.mark.parametrize("case", ["out.ca", "out.ca_id_broadcast"])
def test_perceiver_ca_matches_official(golden, case):
    g = golden("perceiver_ca")
    m = build_ca(g)
    ids, img = g.io["in.id_embedding"], g.io["in.image_tokens"]
    if case == "out.ca_id_broadcast":
        ids = ids[:1]  # one identity broadcast over the image batch
    out = ca_forward(m, ids, img)  # the module's weights in the official layout (tests/test_fold.py: the tables)
    torch.testing.assert_close(out, g.io[case], atol=ATOL, rtol=RTOL)


@torch.no_grad()
def test_bf16_within_tolerance_of_fp32_golden(golden):
    gi = golden("idformer")
    m = build_idformer(gi, torch.bfloat16)
    out = m(gi.io["in.id_cond"].bfloat16(), [h.bfloat16() for h in gi.seq("in.id_vit_hidden")])
    err_idformer = rel_l2(gi.io["out.id_embedding"], out.float())
    gc = golden("perceiver_ca")
    ca = build_ca(gc, torch.bfloat16)
    out = ca_forward(ca, gc.io["in.id_embedding"].bfloat16(), gc.io["in.image_tokens"].bfloat16())
    err_ca = rel_l2(gc.io["out.ca"], out.float())
    assert err_idformer <= bf16_bound("idformer_bf16_vs_fp32"), err_idformer
    assert err_ca <= bf16_bound("perceiver_ca_bf16_vs_fp32"), err_ca

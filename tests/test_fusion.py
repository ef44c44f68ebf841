"""Fusion of several references: fusion weights (bad input), and the joint fusion through the ID encoder's
official multi-image path, checked with the idformer golden (weights, inputs and outputs from its sidecar)."""

from __future__ import annotations

import math

import pytest
import torch
from _golden_models import build_idformer
from conftest import COMFYUI_ROOT, NO_COMFYUI, import_pack, setup_comfyui

if COMFYUI_ROOT is None:  # nodes/ imports ComfyUI
    pytest.skip(NO_COMFYUI, allow_module_level=True)
setup_comfyui()
import_pack()
from comfyui_pulid_flux.pulid.fusion import (  # noqa: E402
    FUSIONS,
    fuse_tokens,
    joint_tokens,
    normalise_weights,
    parse_weights,
)

ATOL, RTOL = 1e-5, 1e-4  # IDFormer in fp32, as test_core_golden


@pytest.mark.parametrize("text", ["inf, 1", "1, -inf", "nan, 1", "1e999, 1"])
def test_non_finite_weights_are_refused_by_name(text):
    with pytest.raises(ValueError, match="not a finite number") as e:
        parse_weights(text, 2)
    assert repr(text) in str(e.value)


def test_huge_finite_weights_are_normalised_without_overflow():
    big = "1e308, 1e308, 5e307"
    w = parse_weights(big, 3)
    assert math.isinf(sum(w))  # the naive sum overflows
    n = normalise_weights(w)
    assert all(math.isfinite(x) for x in n) and math.isclose(math.fsum(n), 1.0, rel_tol=1e-12)
    assert math.isclose(n[0], 0.4, rel_tol=1e-12) and math.isclose(n[2], 0.2, rel_tol=1e-12)
    t = torch.randn(3, 4, 8)
    fused = fuse_tokens(t, "weighted", big)
    assert torch.isfinite(fused).all()
    torch.testing.assert_close(fused, (0.4 * t[0] + 0.4 * t[1] + 0.2 * t[2]).unsqueeze(0))
    tiny = fuse_tokens(t, "weighted", "1e-320, 0, 1e-320")  # subnormal weights: still a proper mean
    torch.testing.assert_close(tiny, ((t[0] + t[2]) / 2).unsqueeze(0))


def test_joint_is_not_a_token_fusion():
    assert "joint" in FUSIONS
    with pytest.raises(ValueError, match="joint_tokens"):
        fuse_tokens(torch.randn(2, 4, 8), "joint")


@torch.no_grad()
def test_joint_fusion_runs_the_official_multi_image_path(golden):
    g = golden("idformer")
    m = build_idformer(g)
    id_cond, hidden = g.io["in.id_cond"], g.seq("in.id_vit_hidden")  # two reference images
    n = id_cond.shape[0]
    assert n >= 2
    # one reference: the 3-D path with n_img 1 is the official single-image encoding
    for i in range(n):
        one = joint_tokens(m, id_cond[i:i + 1], [h[i:i + 1] for h in hidden])
        torch.testing.assert_close(one, g.io["out.id_embedding"][i:i + 1], atol=ATOL, rtol=RTOL)
    # all references: id_cond (1, n, id_in) as in the golden's 3-D call, ViT tokens side by side
    joint = joint_tokens(m, id_cond, hidden)
    assert joint.shape == (1, *g.io["out.id_embedding"].shape[1:])
    direct = m(id_cond.unsqueeze(0), [torch.cat(list(h), dim=0).unsqueeze(0) for h in hidden])
    torch.testing.assert_close(joint, direct, atol=0, rtol=0)
    # no positions inside the IDFormer: the order of the references does not matter
    rev = joint_tokens(m, id_cond.flip(0), [h.flip(0) for h in hidden])
    torch.testing.assert_close(rev, joint, atol=ATOL, rtol=RTOL)
    # and it is neither reference alone nor their mean
    mean = g.io["out.id_embedding"].mean(0, keepdim=True)
    for other in (mean, g.io["out.id_embedding"][:1], g.io["out.id_embedding"][1:2]):
        assert (joint - other).abs().max() > 100 * ATOL

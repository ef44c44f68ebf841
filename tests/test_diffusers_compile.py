"""torch.compile of the patched diffusers transformer, as diffusers recommends for Flux (regional compilation,
compile_repeated_blocks, fullgraph=True so any graph break would fail; the "eager" backend: dynamo alone): no graph break, no recompile and no new
graph across the steps of a run (true CFG with start_step 1, so the ID turns on mid-run), the same result as eager."""

from __future__ import annotations

import _diffusers_tiny as DT
import pytest
import torch

pytest.importorskip("diffusers")
from pulid_flux_id.diffusers_pulid import attach  # noqa: E402


@torch.no_grad()
def test_compiled_blocks_no_graph_break_no_recompile_across_steps():
    import torch._dynamo
    from torch._dynamo.utils import counters

    # 2 double + 2 single blocks: a hooked and a plain block of each kind
    pipe = DT.tiny_pipeline(DT.tiny_transformer(num_layers=2, num_single_layers=2))
    pipe.set_progress_bar_config(disable=True)
    pm = DT.tiny_pulid_model(pipe.transformer)
    per_step: list[tuple[int, int, int]] = []

    def after_step(p, i, t, kw):
        per_step.append((counters["stats"]["unique_graphs"], sum(counters["graph_break"].values()),
                         sum(counters["recompiles"].values()) if "recompiles" in counters else 0))
        return kw

    def run(**extra):
        return pipe("a portrait photo of a person", negative_prompt="blurry", true_cfg_scale=2.0, num_inference_steps=3,
                    height=64, width=64, output_type="latent", generator=torch.Generator().manual_seed(0),
                    **extra).images

    with attach(pipe.transformer, pm, DT.tiny_identity(pm), start_step=1):
        eager = run()
        torch._dynamo.reset()
        counters.clear()
        pipe.transformer.compile_repeated_blocks(fullgraph=True, backend="eager")  # dynamo counts are the same; CPU time is not
        try:
            compiled = run(callback_on_step_end=after_step)
        finally:
            for block in (*pipe.transformer.transformer_blocks, *pipe.transformer.single_transformer_blocks):
                block._compiled_call_impl = None  # nn.Module.compile's own slot: back to eager
    assert per_step[0][0] > 0  # the blocks really were compiled
    assert [s[1:] for s in per_step] == [(0, 0)] * 3  # no graph break, no recompile
    assert len({s[0] for s in per_step}) == 1  # steps 1 and 2 (ID on) compiled nothing new
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-4)

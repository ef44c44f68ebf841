"""PuLID-Flux on diffusers' FluxTransformer2DModel through torch forward hooks only.

* One forward hook per hooked block (after double blocks 0, 2, 4, ... and single blocks 0, 4, 8, ...:
  pulid/config.py ca_layout) adds ``id_weight * CA(id, image tokens)`` to the block's image-token output, as the
  official Flux.forward does. A forward pre-hook on the transformer decides, per call, which table entry each
  batch row reads and its gate (ID weight x step gate x region mask). ``remove()`` takes every hook off: the model
  holds no attribute, parameter or buffer of the adapter, so it is then bit-identical to one never patched.
* Official semantics in FluxPipeline: a call gets the ID from step ``start_step`` on; the true-CFG pass (the
  second transformer call of a step, on the same latents tensor, which is how FluxPipeline runs
  ``true_cfg_scale`` with a negative prompt) gets the uncond ID. Before ``timestep_to_start_cfg`` the official
  loop runs no negative pass; FluxPipeline always runs it, so its output is replaced by the step's positive
  prediction, which makes ``neg + s * (pos - neg)`` exactly ``pos`` (the official prediction).
* Steps are counted per run: a new ``img_ids`` tensor starts a run (FluxPipeline makes one per call), a new
  latents tensor starts a step.
* The ID tables follow the hidden states' device on every call (so model CPU offload works) and are computed in
  the table dtype (the PuLID model's). Under torch.compile the CA always runs with a zero gate for rows without
  the ID, so the compiled blocks see no Python branch that changes between steps.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor

from ..pulid.config import ca_layout
from ..pulid.embedding import IDEmbedding
from ..pulid.fold import build_table
from ..pulid.model import PulidFluxModel
from ..pulid.regional import check_mask, check_mask_batch, token_weights

log = logging.getLogger(__name__)


@dataclass
class _Call:
    """What the block hooks read during one transformer call."""

    select: Tensor  # (rows,) table entry per batch row
    gate: Tensor  # (rows, 1 or L, 1): id_weight x active x mask
    active: bool  # some row gets the ID (eager calls skip the CA otherwise)


class PulidFluxAdapter:
    """The ID cross-attention attached to one FluxTransformer2DModel; see the module docstring.

    identity: an IDEmbedding (tokens (N, T, D): N = 1 for every item, or one per prompt / per batch item; its
    ``uncond`` is the uncond ID of true CFG) or a tokens tensor. mask: optional (H, W) or (B, H, W) region mask
    in [0, 1] over the image. track_steps=False: every call is a positive call at a step >= start_step (for
    calling the transformer directly).
    """

    def __init__(self, transformer, pulid_model: PulidFluxModel, identity: IDEmbedding | Tensor, *,
                 id_weight: float = 1.0, start_step: int = 0, timestep_to_start_cfg: int = 1, mask=None,
                 folded: bool = True, track_steps: bool = True):
        if isinstance(identity, Tensor):
            identity = IDEmbedding(tokens=identity)
        for name, v in (("start_step", start_step), ("timestep_to_start_cfg", timestep_to_start_cfg)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name}={v!r} must be an integer >= 0 (official defaults: start_step 0, 4 for "
                                 f"photoreal; timestep_to_start_cfg 1)")
        blocks, singles = transformer.transformer_blocks, transformer.single_transformer_blocks
        layout = ca_layout(len(blocks), len(singles))
        hidden = transformer.config.num_attention_heads * transformer.config.attention_head_dim
        if (pulid_model.num_ca, pulid_model.hidden_size) != (layout.num_ca, hidden):
            raise ValueError(f"the PuLID model has {pulid_model.num_ca} ID cross-attentions of width "
                             f"{pulid_model.hidden_size}; this transformer ({len(blocks)} double + {len(singles)} "
                             f"single blocks, width {hidden}) needs {layout.num_ca} of width {hidden}: use the "
                             f"PuLID-Flux model made for this Flux")
        if identity.id_dim != pulid_model.id_dim:
            raise ValueError(f"the identity has {identity.id_dim}-wide tokens, the PuLID model expects "
                             f"{pulid_model.id_dim}: encode it with this PuLID model")
        self.id_weight, self.start_step, self.cfg_start = float(id_weight), start_step, timestep_to_start_cfg
        self.mask, self.track_steps = check_mask(mask), track_steps
        self.n_cond, self.has_uncond = identity.tokens.shape[0], identity.uncond is not None
        id_sets = [identity.tokens] + ([identity.uncond] if self.has_uncond else [])
        self.table = build_table(pulid_model, id_sets, folded)  # refuses tokens that overflow the tables
        self.call: _Call | None = None
        self._run_ids = self._latents = self._positive = None
        self.step, self.uncond = 0, False
        self._handles = [transformer.register_forward_pre_hook(self._pre, with_kwargs=True),
                         transformer.register_forward_hook(self._post, with_kwargs=True)]
        for blocks_, where in ((blocks, layout.double), (singles, layout.single)):
            for index, ca_index in where.items():
                self._handles.append(blocks_[index].register_forward_hook(self._block_hook(ca_index)))

    # ------------------------------------------------------------------ lifecycle
    def remove(self) -> None:
        """Take every hook off; the transformer is then exactly as before."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.call = self._run_ids = self._latents = self._positive = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()

    # ------------------------------------------------------------------ per call
    def _pre(self, module, args, kwargs):
        hs = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        img_ids = kwargs.get("img_ids")
        if not self.track_steps:
            self.step, self.uncond = self.start_step, False
        elif img_ids is None or img_ids is not self._run_ids:  # a new run
            self._run_ids, self._latents, self.step, self.uncond = img_ids, hs, 0, False
        elif hs is self._latents:  # the second call on the same latents: FluxPipeline's true-CFG pass
            self.uncond = True
        else:
            self._latents, self.step, self.uncond = hs, self.step + 1, False
        if self.table.weight_device != hs.device:
            self.table.to(hs.device)  # CPU offload: the tables go where the transformer runs
        rows, on = hs.shape[0], self.step >= self.start_step
        if self.uncond:
            select = torch.full((rows,), self.n_cond, dtype=torch.long)
            on = on and self.has_uncond
        elif self.n_cond == 1 or rows % self.n_cond == 0:
            select = torch.arange(self.n_cond).repeat_interleave(rows // self.n_cond)
        else:
            raise ValueError(f"the identity holds {self.n_cond} IDs for a batch of {rows}: give 1 ID, one per prompt "
                             f"or one per image")
        gate = torch.full((rows, 1, 1), self.id_weight if on else 0.0, dtype=self.table.compute_dtype)
        if self.mask is not None:
            gate = gate * self._mask_weights(rows, hs.shape[1], img_ids)
        self.call = _Call(select.to(hs.device), gate.to(hs.device), on)

    def _mask_weights(self, rows: int, tokens: int, img_ids) -> Tensor:
        check_mask_batch(self.mask.shape[0], rows)
        if img_ids is None:
            raise ValueError("a PuLID region mask needs the transformer's img_ids (the token grid)")
        ids = img_ids[-1] if img_ids.ndim == 3 else img_ids
        grid = (int(ids[:, 1].max()) + 1, int(ids[:, 2].max()) + 1)
        if grid[0] * grid[1] != tokens:
            raise ValueError(f"img_ids describe a {grid[0]}x{grid[1]} grid but the call has {tokens} image tokens")
        w = token_weights(self.mask, grid, "cpu", self.table.compute_dtype)  # (B_m, L, 1)
        return w.expand(rows, -1, -1) if w.shape[0] == 1 else w

    def _post(self, module, args, kwargs, output):
        if not self.uncond:
            self._positive = output
            return None
        if self.step < self.cfg_start and self._positive is not None:
            return self._positive  # official: no negative pass yet, so the CFG mix is the positive prediction
        return None

    def _block_hook(self, ca_index: int):
        def hook(module, args, output):
            call = self.call
            if call is None or (not torch.compiler.is_compiling() and not call.active):
                return None
            txt, img = output
            res = self.table.residual(ca_index, img, call.select)
            return txt, img + (res * call.gate).to(img.dtype)

        hook.ca_index = ca_index
        return hook


def attach(transformer, pulid_model: PulidFluxModel, identity: IDEmbedding | Tensor, **options) -> PulidFluxAdapter:
    """PulidFluxAdapter(transformer, pulid_model, identity, **options); ``.remove()`` (or ``with``) takes it off."""
    return PulidFluxAdapter(transformer, pulid_model, identity, **options)


def load_pulid_model(path, *, device=None, dtype=torch.bfloat16) -> PulidFluxModel:
    """The official pulid_flux_v0.9.x.safetensors (or any file of that layout) as a PulidFluxModel."""
    from safetensors.torch import load_file

    return PulidFluxModel.from_state_dict(load_file(str(path)), str(path), device=device, dtype=dtype)

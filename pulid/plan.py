"""One model call's PuLID plan (which rows get which ID entry, with what gate) and the ID term. Plain torch."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

COND, UNCOND = "cond", "uncond"
UNCOND_KEYS = frozenset({"negative", "empty_negative_prompt"})


def role_maps(guider_conds: dict) -> tuple[dict, dict]:
    """({id(list): role}, {entry uuid: role}) of a guider's conds dict (key -> list of cond dicts)."""
    by_list, by_uuid = {}, {}
    for key, conds in guider_conds.items():
        role = UNCOND if key in UNCOND_KEYS else COND
        if conds is None:
            continue
        by_list[id(conds)] = role
        for entry in conds:
            uuid = entry.get("uuid") if isinstance(entry, dict) else None
            if uuid is not None:
                by_uuid.setdefault(uuid, role)
    return by_list, by_uuid


def list_role(conds, maps: tuple[dict, dict]) -> str | None:
    """The role of one cond list a calc_cond_batch call evaluates (None: no list)."""
    if conds is None:
        return None
    by_list, by_uuid = maps
    role = by_list.get(id(conds))
    if role is None:
        uuids = (e.get("uuid") for e in conds if isinstance(e, dict))
        role = next((by_uuid[u] for u in uuids if u in by_uuid), UNCOND)
    return role


def row_entries(chunk_roles: tuple, batch: int, n_cond: int, uncond_mode: str) -> list[int | None]:
    """ID table entry of every latent row (chunk-major), None for no ID."""
    out = []
    for role in chunk_roles:
        if role == UNCOND and uncond_mode == "none":
            out += [None] * batch
        elif role == UNCOND and uncond_mode == "uncond_id":
            out += [n_cond] * batch
        else:
            out += list(range(batch)) if n_cond > 1 else [0] * batch
    return out


@dataclass(frozen=True, slots=True)
class CallPlan:
    """What every block of one model call does for one Apply."""

    id_span: tuple[int, int] | None  # eager: rows [r0, r1) holding every row with an ID (None: no row has one)
    select: Tensor | None  # (rows,) ID entry per row; None: entry 0 for all rows
    gate: Tensor  # (rows, 1 or n_img, 1): weight x active x mask; 0 on rows without ID
    n_img: int  # main-image tokens
    n_ref: int  # reference tokens after them in the model's sequence


def make_plan(entries: list, active: bool, weight: float, table_entries: int, dtype, device,
              mask_weights: Tensor | None, n_chunks: int, n_img: int, n_ref: int) -> CallPlan:
    """mask_weights: (1 or batch, n_img, 1) token weights of the Apply's mask, or None."""
    rows = len(entries)
    on = [i for i, e in enumerate(entries) if active and e is not None]
    select = None
    if table_entries > 1:
        select = torch.tensor([e or 0 for e in entries], dtype=torch.long, device=device)
    gate = torch.tensor([weight if i in on else 0.0 for i in range(rows)], dtype=dtype, device=device).view(rows, 1, 1)
    if mask_weights is not None:
        gate = gate * (mask_weights.repeat(n_chunks, 1, 1) if mask_weights.shape[0] > 1 else mask_weights)
    span = (on[0], on[-1] + 1) if on else None
    return CallPlan(id_span=span, select=select, gate=gate, n_img=n_img, n_ref=n_ref)


def add_id(plan: CallPlan, x: Tensor, single: bool, residual) -> Tensor:
    """x with gate * residual(main-image tokens, select) added out of place (x itself when no row gets the ID).

    residual(img (rows, n, dim), select (rows,) or None) -> (rows, n, dim): the ID cross-attention."""
    if torch.compiler.is_compiling():  # one graph for the whole run: the gate zeroes rows without ID
        r0, r1 = 0, x.shape[0]
    elif plan.id_span is None:
        return x
    else:
        r0, r1 = plan.id_span
    n = plan.n_img
    t0 = x.shape[1] - plan.n_ref - n if single else 0
    if t0 < 0 or t0 + n > x.shape[1]:
        raise RuntimeError(f"PuLID: {n} image + {plan.n_ref} reference tokens exceed the sequence of {x.shape[1]}")
    select = None if plan.select is None else plan.select[r0:r1]
    delta = (residual(x[r0:r1, t0:t0 + n], select) * plan.gate[r0:r1]).to(x.dtype)
    if r1 - r0 == x.shape[0] and n == x.shape[1]:
        return x + delta  # out of place: newer blocks add into img in place
    out = x.clone()
    out[r0:r1, t0:t0 + n] += delta
    return out

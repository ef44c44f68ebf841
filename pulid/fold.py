"""The ID cross-attention of one identity, prepared once, as the small module sampling hands to ComfyUI.

Folded (the default). The CA has no biases and its keys/values depend on the ID tokens only. With
LN(x) = x̂·γ + β (x̂ the normalised image token, γ/β the affine of `norm2`) and, per head h,
q_h = LN(x) Wq_hᵀ and k_h, v_h projected from the ID tokens:

    softmax(q_h k_hᵀ / √d) v_h Wo_hᵀ = softmax(x̂ A_h + b_h) C_h
    A_h = diag(γ) Wq_hᵀ k_hᵀ / √d  (dim × T)   b_h = β Wq_hᵀ k_hᵀ / √d  (T)   C_h = v_h Wo_hᵀ  (T × dim)

Stacked over the heads, one CA is two GEMMs with an inner width of heads·T (16·32 = 512 at full size)
instead of `to_q`, attention and `to_out` (2048 wide), and sampling needs none of the CA weights.

Reference (`ReferenceID`): the CA modules themselves with the ID keys/values computed once; the folded
module is checked against it.

Both tables stack every ID a run may use: entries 0..N-1 are the cond identities (one per latent item, or
one for all), entry N the uncond ID of true CFG when asked for. Entries with fewer tokens are padded; the
padded tokens get a logit of -inf, so they carry exactly zero attention.

Folding runs in float32 once per (identity, PuLID model) and is cached with weak keys on both, so a
re-queue with a new weight or timing reuses the same module (and the same ComfyUI ModelPatcher).
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.weak import WeakIdKeyDictionary

from .attention import PerceiverAttentionCA
from .model import PulidFluxModel

STORAGE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_cache = WeakIdKeyDictionary()  # PulidFluxModel -> {(kind, with_uncond): WeakIdKeyDictionary(tokens -> _Entry)}
_lock = threading.Lock()


def storage_dtype(pulid_model: PulidFluxModel) -> torch.dtype:
    """Folded tables are stored (and computed) in the CA weights' dtype, float32 for any other dtype."""
    dtype = pulid_model.pulid_ca[0].to_q.weight.dtype
    return dtype if dtype in STORAGE_DTYPES else torch.float32


def _fp32(t: Tensor) -> Tensor:
    return t.detach().to(device="cpu", dtype=torch.float32)


def _affine(norm: nn.LayerNorm, width: int) -> tuple[Tensor, Tensor]:
    """(gamma, beta) of a LayerNorm in float32; (1, 0) when it has no affine."""
    gamma = torch.ones(width) if norm.weight is None else _fp32(norm.weight)
    beta = torch.zeros(width) if norm.bias is None else _fp32(norm.bias)
    return gamma, beta


def project_id(ca: PerceiverAttentionCA, ids: Tensor) -> tuple[Tensor, Tensor]:
    """k, v (N, heads, T, dim_head) in float32 from ID tokens (N, T, kv_dim): norm1 then to_kv."""
    norm = F.layer_norm(_fp32(ids), (ca.kv_dim,), *_affine(ca.norm1, ca.kv_dim), ca.norm1.eps)
    k, v = (norm @ _fp32(ca.to_kv.weight).T).chunk(2, dim=-1)
    n, t, _ = k.shape
    return (k.view(n, t, ca.heads, ca.dim_head).transpose(1, 2), v.view(n, t, ca.heads, ca.dim_head).transpose(1, 2))


def fold_ca(ca: PerceiverAttentionCA, ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """A (N, dim, H, T), b (N, H, T), C (N, H, T, dim) in float32 for ID tokens (N, T, kv_dim)."""
    k, v = project_id(ca, ids)
    wq = _fp32(ca.to_q.weight).view(ca.heads, ca.dim_head, ca.dim)  # (H, d, dim)
    wo = _fp32(ca.to_out.weight).view(ca.dim, ca.heads, ca.dim_head)  # (dim, H, d)
    gamma, beta = _affine(ca.norm2, ca.dim)
    kq = torch.einsum("nhtd,hdc->nhtc", k, wq) * ca.dim_head ** -0.5  # (N, H, T, dim) = (Wq_hᵀ k_hᵀ)ᵀ / √d
    a = (kq * gamma).permute(0, 3, 1, 2)  # (N, dim, H, T)
    b = kq @ beta  # (N, H, T)
    c = torch.einsum("nhtd,chd->nhtc", v, wo)  # (N, H, T, dim)
    return a, b, c


def _same(t: Tensor) -> Tensor:
    return t


def _pad_tokens(t: Tensor, tokens: int, dim: int, value: float) -> Tensor:
    missing = tokens - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t, t.new_full(shape, value)], dim=dim)


class _IDTable(nn.Module):
    """What the block patches read of either table; `lead` (a property) is its (CA, entry, ...) tensor."""

    @property
    def entries(self) -> int:
        return self.lead.shape[1]

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.lead.dtype

    @property
    def weight_device(self) -> torch.device:
        return self.lead.device


class FoldedID(_IDTable):
    """Per CA: A (G, dim, H·T), b (G, 1, H·T), C (G, H·T, dim) for G stacked IDs; see the module docstring."""

    def __init__(self, a: Tensor, b: Tensor, c: Tensor, heads: int, eps: float):
        super().__init__()
        self.a, self.b, self.c = (nn.Parameter(t, requires_grad=False) for t in (a, b, c))
        self.heads, self.eps = heads, eps

    @classmethod
    def fold(cls, pulid_model: PulidFluxModel, id_sets: list[Tensor], dtype: torch.dtype) -> FoldedID:
        tokens = max(ids.shape[1] for ids in id_sets)
        per_ca = []
        with torch.no_grad():
            for ca in pulid_model.pulid_ca:
                parts = [fold_ca(ca, ids) for ids in id_sets]
                a = torch.cat([_pad_tokens(a, tokens, 3, 0.0) for a, _, _ in parts])  # (G, dim, H, T)
                b = torch.cat([_pad_tokens(b, tokens, 2, float("-inf")) for _, b, _ in parts])  # (G, H, T)
                c = torch.cat([_pad_tokens(c, tokens, 2, 0.0) for _, _, c in parts])  # (G, H, T, dim)
                per_ca.append((a.flatten(2), b.flatten(1).unsqueeze(1), c.flatten(1, 2)))
        a, b, c = (torch.stack([p[i] for p in per_ca]).to(dtype) for i in range(3))
        ca0 = pulid_model.pulid_ca[0]
        return cls(a, b, c, ca0.heads, ca0.norm2.eps)

    @property
    def lead(self) -> Tensor:
        return self.a

    def fits(self) -> tuple[int, int, int]:
        """(CA count, width, heads) the table was made for."""
        return self.a.shape[0], self.a.shape[2], self.heads

    def residual(self, ca_index: int, img: Tensor, select: Tensor | None, cast=_same) -> Tensor:
        """The CA output for image tokens img (rows, L, dim); select (rows,) picks each row's ID entry
        (None: entry 0 for every row). Computed in the table's dtype. cast: applied to the CA's tensors
        (the caller moves a table left on another device)."""
        a, b, c = (cast(t[ca_index]) for t in (self.a, self.b, self.c))
        if select is not None:
            a, b, c = a[select], b[select], c[select]
        x = F.layer_norm(img.to(a.dtype), img.shape[-1:], eps=self.eps)
        logits = torch.matmul(x, a) + b  # (rows, L, H·T)
        weights = logits.unflatten(-1, (self.heads, -1)).softmax(dim=-1).flatten(-2)
        return torch.matmul(weights, c)


class ReferenceID(_IDTable):
    """The unfolded path: the CA modules with each ID's keys/values (G, H, T, d) precomputed per CA."""

    def __init__(self, cas: nn.ModuleList, k: Tensor, v: Tensor, key_bias: Tensor):
        super().__init__()
        self.cas = cas
        self.k, self.v, self.key_bias = (nn.Parameter(t, requires_grad=False) for t in (k, v, key_bias))

    @classmethod
    def build(cls, pulid_model: PulidFluxModel, id_sets: list[Tensor], dtype: torch.dtype) -> ReferenceID:
        tokens = max(ids.shape[1] for ids in id_sets)
        with torch.no_grad():
            kv = [[project_id(ca, ids) for ids in id_sets] for ca in pulid_model.pulid_ca]
            k = torch.stack([torch.cat([_pad_tokens(k, tokens, 2, 0.0) for k, _ in row]) for row in kv])
            v = torch.stack([torch.cat([_pad_tokens(v, tokens, 2, 0.0) for _, v in row]) for row in kv])
            bias = torch.cat([_pad_tokens(torch.zeros(ids.shape[0], 1, 1, ids.shape[1]), tokens, 3, float("-inf"))
                              for ids in id_sets])  # (G, 1, 1, T): -inf on padded keys
        return cls(pulid_model.pulid_ca, k.to(dtype), v.to(dtype), bias.to(dtype))

    @property
    def lead(self) -> Tensor:
        return self.k

    def fits(self) -> tuple[int, int, int]:
        return len(self.cas), self.cas[0].dim, self.k.shape[2]

    def residual(self, ca_index: int, img: Tensor, select: Tensor | None, cast=_same) -> Tensor:
        ca = self.cas[ca_index]
        k, v, bias = cast(self.k[ca_index]), cast(self.v[ca_index]), cast(self.key_bias)
        if select is not None:
            k, v, bias = k[select], v[select], bias[select]
        else:
            k, v, bias = (t.expand(img.shape[0], *t.shape[1:]) for t in (k, v, bias))
        x = img.to(k.dtype)
        norm = ca.norm2
        x = F.layer_norm(x, (ca.dim,), *(None if w is None else cast(w) for w in (norm.weight, norm.bias)), norm.eps)
        q = F.linear(x, cast(ca.to_q.weight))
        q = q.view(*q.shape[:2], ca.heads, ca.dim_head).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        return F.linear(out.transpose(1, 2).flatten(2), cast(ca.to_out.weight))


@dataclass(frozen=True, slots=True, eq=False)
class PreparedID:
    """What one Apply needs from an identity: the table module, its ModelPatcher, where its entries are."""

    table: FoldedID | ReferenceID
    patcher: object  # pulid.wrap(table): ComfyUI loads and offloads it with the diffusion model
    n_cond: int  # entries 0..n_cond-1: cond identities; entry n_cond: the uncond ID (if with_uncond)
    with_uncond: bool
    pulid_name: str
    source: weakref.ref  # the PulidFluxModel it was made from

    def check_source(self, pulid) -> None:
        """Refuse a table made from another PuLID model, or one that does not fit this model's CAs."""
        model = pulid.model
        if self.source() is not model:
            raise ValueError(
                f"this prepared identity was made with the PuLID model {self.pulid_name!r} but is applied with "
                f"{pulid.name!r}: prepare the identity again with the PuLID model you apply"
            )
        expected = (model.num_ca, model.hidden_size, model.ca_args["heads"])
        if self.table.fits() != expected:
            raise ValueError(
                f"the prepared identity's tables (CAs, width, heads) = {self.table.fits()} do not fit the PuLID "
                f"model {pulid.name!r} {expected}; prepare the identity again with this PuLID model"
            )


def prepare_id(pulid, tokens: Tensor, uncond: Tensor | None, *, folded: bool = True) -> PreparedID:
    """The cached PreparedID of (tokens, uncond) for the PulidFlux handle `pulid` (uncond None: no uncond entry)."""
    model = pulid.model
    kind = ("folded" if folded else "reference", uncond is not None)
    with _lock:
        per_model = _cache.setdefault(model, {})
        by_tokens = per_model.setdefault(kind, WeakIdKeyDictionary())
        per_tokens = by_tokens.setdefault(tokens, {})
        key = None if uncond is None else id(uncond)
        hit = per_tokens.get(key)
        if hit is not None and (uncond is None or hit[1]() is uncond):
            return hit[0]
    id_sets = [tokens] if uncond is None else [tokens, uncond]
    build = FoldedID.fold if folded else ReferenceID.build
    table = build(model, id_sets, storage_dtype(model))
    prepared = PreparedID(table=table, patcher=pulid.wrap(table), n_cond=tokens.shape[0],
                          with_uncond=uncond is not None, pulid_name=pulid.name, source=weakref.ref(model))
    with _lock:
        per_tokens[key] = (prepared, (lambda: None) if uncond is None else weakref.ref(uncond))
    return prepared

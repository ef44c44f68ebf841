"""ID tables: the ID cross-attentions (CAs) of one identity, prepared once, as the module sampling hands to ComfyUI."""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.weak import WeakIdKeyDictionary

from .attention import PerceiverAttentionCA
from .embedding import check_finite
from .model import PulidFluxModel

STORAGE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_cache = WeakIdKeyDictionary()  # PulidFluxModel -> {(form, with_uncond, device): WeakIdKeyDictionary(tokens -> ..)}
_lock = threading.Lock()


def storage_dtype(pulid_model: PulidFluxModel) -> torch.dtype:
    """Tables are stored and computed in the CA weights' dtype, float32 for any other dtype."""
    dtype = pulid_model.pulid_ca[0].to_q.weight.dtype
    return dtype if dtype in STORAGE_DTYPES else torch.float32


def cost(pulid_model: PulidFluxModel, tokens: int) -> tuple[int, int]:
    """(folded, unfolded) multiply-accumulates per image token over all CAs for `tokens` ID tokens."""
    ca = pulid_model.pulid_ca[0]
    inner = ca.heads * ca.dim_head
    return (pulid_model.num_ca * 2 * ca.dim * ca.heads * tokens,
            pulid_model.num_ca * (2 * ca.dim * inner + 2 * inner * tokens))


def choose_folded(pulid_model: PulidFluxModel, tokens: int) -> bool:
    """Whether the folded form is the cheaper one for `tokens` ID tokens (ties go to the folded form)."""
    folded, unfolded = cost(pulid_model, tokens)
    return folded <= unfolded


def _fp32(t: Tensor | None, device, default: float | None = None, width: int = 0) -> Tensor:
    if t is None:
        return torch.full((width,), default, device=device)
    return t.detach().to(device=device, dtype=torch.float32)


def project_id(ca: PerceiverAttentionCA, ids: Tensor) -> tuple[Tensor, Tensor]:
    """k, v (N, heads, T, dim_head) in float32 on ids' device from ID tokens (N, T, kv_dim): norm1 then to_kv."""
    dev, n1 = ids.device, ca.norm1
    norm = F.layer_norm(ids.float(), (ca.kv_dim,), _fp32(n1.weight, dev, 1.0, ca.kv_dim),
                        _fp32(n1.bias, dev, 0.0, ca.kv_dim), n1.eps)
    k, v = (norm @ _fp32(ca.to_kv.weight, dev).T).chunk(2, dim=-1)
    n, t, _ = k.shape
    return (k.view(n, t, ca.heads, ca.dim_head).transpose(1, 2), v.view(n, t, ca.heads, ca.dim_head).transpose(1, 2))


def fold_ca(ca: PerceiverAttentionCA, ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """A (N, dim, H, T), b (N, H, T), C (N, H, T, dim) in float32 on ids' device for ID tokens (N, T, kv_dim)."""
    dev = ids.device
    k, v = project_id(ca, ids)
    wq = _fp32(ca.to_q.weight, dev).view(ca.heads, ca.dim_head, ca.dim)  # (H, d, dim)
    kq = torch.einsum("nhtd,hdc->nhtc", k, wq) * ca.dim_head ** -0.5  # (N, H, T, dim) = (Wq_hᵀ k_hᵀ)ᵀ / √d
    a = (kq * _fp32(ca.norm2.weight, dev, 1.0, ca.dim)).permute(0, 3, 1, 2)  # (N, dim, H, T)
    b = kq @ _fp32(ca.norm2.bias, dev, 0.0, ca.dim)  # (N, H, T)
    c = torch.einsum("nhtd,chd->nhtc", v, _fp32(ca.to_out.weight, dev).view(ca.dim, ca.heads, ca.dim_head))
    return a, b, c


def _pad(t: Tensor, tokens: int, dim: int, value: float) -> Tensor:
    shape = list(t.shape)
    shape[dim] = tokens - t.shape[dim]
    return t if shape[dim] == 0 else torch.cat([t, t.new_full(shape, value)], dim=dim)


class _IDTable(nn.Module):
    """What the block patches read of either table."""

    def __init__(self, dtype: torch.dtype, lead: Tensor):
        super().__init__()
        self.compute_dtype, self.entries = dtype, lead.shape[1]

    @property
    def weight_device(self) -> torch.device:
        return getattr(self, self.LEAD).device

    def _at(self, t: Tensor, like: Tensor, cast=None) -> Tensor:
        """t on `like`'s device in the compute dtype; cast(t, device=...): the caller's device copy (ComfyUI's)."""
        t = t if cast is None else cast(t, device=like.device)
        return t.to(device=like.device, dtype=self.compute_dtype, non_blocking=True)


def _params(*tensors: Tensor):
    return (nn.Parameter(t, requires_grad=False) for t in tensors)


class FoldedID(_IDTable):
    """Per CA: A (G, dim, H·T), b (G, 1, H·T), C (G, H·T, dim) for G stacked IDs."""

    LEAD = "a"

    def __init__(self, a: Tensor, b: Tensor, c: Tensor, heads: int, eps: float):
        super().__init__(a.dtype, a)
        self.a, self.b, self.c = _params(a, b, c)
        self.heads, self.eps = heads, eps

    @classmethod
    def fold(cls, pulid_model: PulidFluxModel, id_sets: list[Tensor], dtype: torch.dtype, device=None) -> FoldedID:
        """Fold on `device` (default: the CA weights' device) one CA at a time; the table is stored in `dtype`
        next to the CA weights."""
        ca0 = pulid_model.pulid_ca[0]
        store = ca0.to_q.weight.device
        device = store if device is None else torch.device(device)
        g, ht = sum(ids.shape[0] for ids in id_sets), ca0.heads * max(ids.shape[1] for ids in id_sets)
        n = pulid_model.num_ca
        a = torch.empty(n, g, ca0.dim, ht, dtype=dtype, device=store)
        b = torch.empty(n, g, 1, ht, dtype=dtype, device=store)
        c = torch.empty(n, g, ht, ca0.dim, dtype=dtype, device=store)
        with torch.no_grad():
            for i, ca in enumerate(pulid_model.pulid_ca):
                row = 0
                for ids in id_sets:
                    fa, fb, fc = fold_ca(ca, ids.to(device))
                    t, r = ht // ca0.heads, slice(row, row + ids.shape[0])
                    a[i, r] = _pad(fa, t, 3, 0.0).flatten(2).to(store, dtype)
                    b[i, r] = _pad(fb, t, 2, float("-inf")).flatten(1).unsqueeze(1).to(store, dtype)
                    c[i, r] = _pad(fc, t, 2, 0.0).flatten(1, 2).to(store, dtype)
                    row += ids.shape[0]
        return cls(a, b, c, ca0.heads, ca0.norm2.eps)

    def finite(self) -> bool:
        b = self.b.float()
        return bool(self.a.isfinite().all() and self.c.isfinite().all() and not (b.isnan() | (b == float("inf"))).any())

    def residual(self, ca_index: int, img: Tensor, select: Tensor | None, cast=None) -> Tensor:
        """The CA output for image tokens img (rows, L, dim), in the table's dtype; select (rows,) picks each
        row's entry (None: entry 0 for every row). The logits are computed in float32."""
        a, b, c = (self._at(t[ca_index], img, cast) for t in (self.a, self.b, self.c))
        if select is not None:
            a, b, c = a[select], b[select], c[select]
        x = F.layer_norm(img.float(), img.shape[-1:], eps=self.eps)
        logits = torch.matmul(x, a.float()) + b.float()  # (rows, L, H·T)
        weights = logits.unflatten(-1, (self.heads, -1)).softmax(dim=-1).flatten(-2)
        return torch.matmul(weights.to(c.dtype), c)


class ReferenceID(_IDTable):
    """The unfolded form: each CA's norm2 / to_q / to_out (shared with the PuLID model) and each ID's
    keys/values (CA, G, H, T, d) precomputed."""

    LEAD = "k"

    def __init__(self, cas: nn.ModuleList, k: Tensor, v: Tensor, key_bias: Tensor):
        super().__init__(k.dtype, k)
        self.cas = nn.ModuleList(nn.ModuleList([ca.norm2, ca.to_q, ca.to_out]) for ca in cas)
        self.k, self.v, self.key_bias = _params(k, v, key_bias)
        self.eps = cas[0].norm2.eps

    @classmethod
    def build(cls, pulid_model: PulidFluxModel, id_sets: list[Tensor], dtype: torch.dtype, device=None) -> ReferenceID:
        store = pulid_model.pulid_ca[0].to_q.weight.device
        device = store if device is None else torch.device(device)
        tokens = max(ids.shape[1] for ids in id_sets)
        with torch.no_grad():
            kv = [[project_id(ca, ids.to(device)) for ids in id_sets] for ca in pulid_model.pulid_ca]
            k, v = (torch.stack([torch.cat([_pad(p[j], tokens, 2, 0.0) for p in row]) for row in kv]).to(store, dtype)
                    for j in (0, 1))
            bias = torch.cat([_pad(torch.zeros(ids.shape[0], 1, 1, ids.shape[1]), tokens, 3, float("-inf"))
                              for ids in id_sets])  # (G, 1, 1, T): -inf on padded keys
        return cls(pulid_model.pulid_ca, k, v, bias.to(store, dtype))

    def finite(self) -> bool:
        return bool(self.k.isfinite().all() and self.v.isfinite().all())

    def residual(self, ca_index: int, img: Tensor, select: Tensor | None, cast=None) -> Tensor:
        norm, to_q, to_out = self.cas[ca_index]
        k, v, bias = (self._at(t, img, cast) for t in (self.k[ca_index], self.v[ca_index], self.key_bias))
        if select is not None:
            k, v, bias = k[select], v[select], bias[select]
        else:
            k, v, bias = (t.expand(img.shape[0], *t.shape[1:]) for t in (k, v, bias))
        w, bn = (None if p is None else self._at(p, img, cast) for p in (norm.weight, norm.bias))
        x = F.layer_norm(self._at(img, img), img.shape[-1:], w, bn, self.eps)
        q = F.linear(x, self._at(to_q.weight, img, cast))
        q = q.view(*q.shape[:2], k.shape[1], k.shape[-1]).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return F.linear(out.transpose(1, 2).flatten(2), self._at(to_out.weight, img, cast))


@dataclass(frozen=True, slots=True, eq=False)
class PreparedID:
    """What one Apply needs from an identity: the table, its ModelPatcher, where its entries are."""

    table: FoldedID | ReferenceID
    patcher: object  # ComfyUI loads and offloads it with the diffusion model
    n_cond: int  # entries 0..n_cond-1: cond identities; entry n_cond: the uncond ID (if with_uncond)
    with_uncond: bool


def build_table(model: PulidFluxModel, id_sets: list[Tensor], folded: bool | None = None, device=None) -> _IDTable:
    """The ID table of `id_sets` (cond tokens, then the uncond ID if any), built on `device`. folded None: the
    cheaper form. Refuses an identity whose tokens or tables are not finite."""
    if folded is None:
        folded = choose_folded(model, max(ids.shape[1] for ids in id_sets))
    for name, ids in zip(("ID tokens", "uncond ID tokens"), id_sets):
        check_finite(name, ids, torch.float32)
    dtype = storage_dtype(model)
    table = (FoldedID.fold if folded else ReferenceID.build)(model, id_sets, dtype, device)
    if not table.finite():
        top = max(float(ids.abs().max()) for ids in id_sets)
        raise ValueError(
            f"the identity's tokens (largest |value| {top:.3g}) overflow the ID tables in {dtype}: the ID would give a "
            f"black image; encode the reference images again (ID tokens are of order 1-10) or load another ID file"
        )
    return table


def prepare_id(pulid, tokens: Tensor, uncond: Tensor | None, *, folded: bool | None = None,
               device=None) -> PreparedID:
    """The cached PreparedID of (tokens, uncond) for the PulidFlux handle `pulid`, built on `device` (the Flux
    model's load device; its patcher loads there). folded None: the cheaper form (see `build_table`)."""
    model = pulid.model
    tokens_max = max(tokens.shape[1], 0 if uncond is None else uncond.shape[1])
    folded = choose_folded(model, tokens_max) if folded is None else folded
    kind = ("folded" if folded else "reference", uncond is not None, None if device is None else str(device))
    key = None if uncond is None else id(uncond)
    with _lock:
        per_tokens = _cache.setdefault(model, {}).setdefault(kind, WeakIdKeyDictionary()).setdefault(tokens, {})
        hit = per_tokens.get(key)
        if hit is not None and (uncond is None or hit[1]() is uncond):
            return hit[0]
    table = build_table(model, [tokens] if uncond is None else [tokens, uncond], folded, device)
    prepared = PreparedID(table=table, patcher=pulid.wrap(table, device), n_cond=tokens.shape[0],
                          with_uncond=uncond is not None)
    with _lock:
        per_tokens[key] = (prepared, (lambda: None) if uncond is None else weakref.ref(uncond))
    return prepared

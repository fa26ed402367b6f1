"""Product-key experts (Doge's CDMoE): experts as rows of embedding tables on a key grid.

Doge routes each token through a router of ``2K`` outputs — two halves of ``K`` sub-key scores —
and expert ``(i, j)`` of the ``K × K`` grid (embedding row ``i·K + j``) scores
``s_x[i] + s_y[j]``; the top-k of those pairs are the token's experts, each one row of a
``down_embed`` and an ``up_embed`` table. One expert cannot be removed alone: the grid must stay
square. What can be removed is a *sub-key*: key ``i`` drops router outputs ``i`` and ``K + i``
(the model scores both halves with the same key set, and its reshape reads either half as ``x``
or ``y``), and every grid row and column ``i`` with them — ``2K − 1`` experts. The pruned layer
then routes exactly as the dense one would with those experts masked out, on a ``K' × K'`` grid.

Which experts a token used, and with what weight, is read from the forward itself: the
embedding lookups into ``up_embed`` give the indices, and the product that mixes those rows gives
each row's coefficient (activation × router weight), so an expert's contribution norm is
``|coefficient| · ‖up row‖`` without re-implementing the routing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

# model types whose MoE layers hold product-key experts (checked from the config, before loading)
PRODUCT_KEY_TYPES = frozenset({"doge"})


def uses_product_keys(config) -> bool:
    return getattr(config, "model_type", None) in PRODUCT_KEY_TYPES


def keys_per_half(experts: int) -> int:
    """The grid side ``K``: the model addresses ``K²`` of its ``experts`` rows (``⌊√experts⌋``)."""
    return math.isqrt(experts)


def keys_to_remove(experts: int, fraction: float) -> int:
    """Sub-keys to drop so that the ``(K − r)²`` experts left are nearest ``(1 − fraction)·K²``."""
    keys = keys_per_half(experts)
    return int(round(keys - keys * math.sqrt(1.0 - fraction)))


def experts_left(experts: int, fraction: float) -> int:
    return (keys_per_half(experts) - keys_to_remove(experts, fraction)) ** 2


@dataclass
class ProductKeyBlock:
    """One MoE block's product-key parts, found by shape: two ``experts``-row embedding tables
    (the first one read against the hidden state, ``down``; the second mixed into it, ``up``) and
    the ``2K``-output router."""

    module: nn.Module
    router: nn.Linear
    down: nn.Embedding
    up: nn.Embedding
    keys: int

    @classmethod
    def find(cls, module: nn.Module, experts: int) -> "ProductKeyBlock | None":
        keys = keys_per_half(experts)
        children = dict(module.named_children())
        tables = [m for m in children.values() if isinstance(m, nn.Embedding) and m.num_embeddings == experts]
        routers = [m for m in children.values() if isinstance(m, nn.Linear) and m.out_features == 2 * keys]
        if len(tables) != 2 or len(routers) != 1:
            return None
        named = {name: m for name, m in children.items() if m in tables}
        up = next((m for name, m in named.items() if "up" in name), tables[1])
        down = next(m for m in tables if m is not up)
        return cls(module, routers[0], down, up, keys)

    def grid_rows(self, kept_keys: list[int]) -> list[int]:
        """Embedding rows of the kept ``K' × K'`` grid, in the pruned model's order."""
        return [i * self.keys + j for i in kept_keys for j in kept_keys]


def product_key_blocks(layer: nn.Module, experts: int | None) -> dict[str, ProductKeyBlock]:
    """Local path -> product-key block, for every such MoE block of ``layer``."""
    if not experts:
        return {}
    found = {name: ProductKeyBlock.find(module, experts) for name, module in layer.named_modules()}
    return {name: block for name, block in found.items() if block is not None}


class _ContributionMode(TorchFunctionMode):
    """Inside one block's forward: the ``up_embed`` lookup's indices and rows, then the product
    that weights those rows — each (token, slot)'s contribution norm, added to its expert."""

    def __init__(self, block: ProductKeyBlock, sums: torch.Tensor):
        super().__init__()
        self.block, self.sums = block, sums
        self.lookup: tuple[torch.Tensor, torch.Tensor] | None = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if func is F.embedding and len(args) >= 2 and args[1] is self.block.up.weight:
            self.lookup = (args[0].detach(), result.detach())
        elif (self.lookup is not None and func in (torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__)
              and len(args) >= 2 and isinstance(args[1], torch.Tensor) and args[1].data_ptr() == self.lookup[1].data_ptr()):
            indices, rows = self.lookup
            coefficients = args[0].detach().reshape(indices.shape).double()
            norms = coefficients.abs() * rows.double().norm(dim=-1)
            flat = indices.reshape(-1)
            self.sums[:, 0].index_add_(0, flat, norms.reshape(-1))
            self.sums[:, 1].index_add_(0, flat, torch.ones_like(flat, dtype=torch.float64))
            self.lookup = None
        return result


def capture_contributions(block: ProductKeyBlock, sums: torch.Tensor):
    """Wrap ``block.module``'s forward so that each call adds, per expert row, the sum of its
    contribution norms (column 0) and its routed-token count (column 1) to ``sums``
    (``[experts, 2]``, float64); returns a callable that restores the forward."""
    module = block.module
    own = module.__dict__.get("forward")
    bound = type(module).forward

    def forward(*args, **kwargs):
        with _ContributionMode(block, sums):
            return own(*args, **kwargs) if own is not None else bound(module, *args, **kwargs)

    module.forward = forward

    def restore() -> None:
        if own is None:
            del module.forward
        else:
            module.forward = own

    return restore


def key_saliency_order(expert_scores: torch.Tensor, keys: int, remove: int) -> list[int]:
    """The ``remove`` sub-keys to drop, greedily: each time the key whose grid row and column still
    hold the least total expert saliency (experts already removed no longer count)."""
    grid = expert_scores[: keys * keys].double().reshape(keys, keys).clone()
    alive = list(range(keys))
    removed: list[int] = []
    for _ in range(remove):
        sub = grid[alive][:, alive]
        cost = sub.sum(0) + sub.sum(1) - sub.diagonal()
        key = alive[int(torch.argmin(cost))]
        removed.append(key)
        alive.remove(key)
    return sorted(removed)


@torch.no_grad()
def keep_keys(block: ProductKeyBlock, kept_keys: list[int]) -> list[str]:
    """Shrink ``block`` to the sub-keys ``kept_keys``: router outputs ``i`` and ``K + i`` of each,
    the embedding rows of the kept grid (rows past ``K²``, never addressed, are dropped too), and
    the module's expert and key counts. Returns the names of the tensors sliced."""
    rows = torch.tensor(block.grid_rows(kept_keys), dtype=torch.long)
    router_rows = torch.tensor(kept_keys + [block.keys + k for k in kept_keys], dtype=torch.long)
    block.router.weight = nn.Parameter(block.router.weight.data.index_select(0, router_rows.to(block.router.weight.device)).clone())
    if block.router.bias is not None:
        block.router.bias = nn.Parameter(block.router.bias.data.index_select(0, router_rows.to(block.router.bias.device)).clone())
    block.router.out_features = len(router_rows)
    for table in (block.down, block.up):
        table.weight = nn.Parameter(table.weight.data.index_select(0, rows.to(table.weight.device)).clone())
        table.num_embeddings = len(rows)
    names = {id(m): n for n, m in block.module.named_children()}
    for attr, value in (("num_experts", len(rows)), ("num_keys", len(kept_keys))):
        if isinstance(getattr(block.module, attr, None), int):
            setattr(block.module, attr, value)
    block.keys = len(kept_keys)
    return [f"{names[id(block.router)]}.weight", f"{names[id(block.down)]}.weight", f"{names[id(block.up)]}.weight"]

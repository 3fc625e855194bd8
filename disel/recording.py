"""Recording post-sigmoid gate values during forward passes (the paper's gate analysis, THEORY.md §3).

::

    with record_gates(model, bins=20) as rec:
        for batch in batches:
            rec.set_token_mask(batch["response_mask"])  # (batch, seq): count response tokens only
            model(batch["input_ids"])
    rec.by_depth()          # early / mid / late thirds of the layers
    rec.by_kind()           # attention / mlp
    rec.save_json("gates_math.json")

Every module that has an ``active_gates()`` method (:class:`~disel.layers.DiselLinear`, the PEFT DISeL
layers) gets a forward hook while the context is open, and only then: outside it the model runs
untouched. The hook recomputes ``g = σ(W_g x + b_g)`` from the module's input with
:func:`disel.functional.gate_values` under ``no_grad`` (no dropout: record in ``eval()`` mode, where the
update reads the same input) and folds the values into streaming summaries, so memory stays bounded
however long the evaluation: a fixed-bin histogram over [0, 1], count, sum, sum of squares and per-rank-
component sums. The summaries stay on the model's device until read (no host synchronisation per call).

Keys are ``(layer index, module name)``, e.g. ``(3, "q_proj")``:

* the layer index is the number following a ``layers`` / ``layer`` / ``h`` / ``blocks`` / ``block``
  component of the module path (``model.layers.3.self_attn.q_proj`` → 3; ``transformer.h.3.attn.c_attn``
  → 3; ``encoder.layer.3.output.dense`` → 3), ``None`` if there is none;
* the module name is the last path component, extended leftwards (within the layer) only as far as
  needed to tell two adapted modules of the same layer apart: Llama gives ``q_proj`` … ``down_proj``;
  RoBERTa ``query``, ``key``, ``value``, ``attention.output.dense``, ``intermediate.dense``,
  ``output.dense``; GPT-2 ``c_attn``, ``attn.c_proj``, ``c_fc``, ``mlp.c_proj``;
* a module with several active adapters records each under ``"<name>/<adapter>"``.

The full module path is kept in each :class:`GateStats`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .functional import gate_values
from .io import write_text_atomic

__all__ = [
    "ATTENTION_CONTAINERS",
    "ATTENTION_NAMES",
    "DEPTH_GROUPS",
    "GateRecorder",
    "GateStats",
    "MLP_CONTAINERS",
    "MLP_NAMES",
    "depth_group",
    "module_kind",
    "parse_layer_index",
    "record_gates",
]

LAYER_CONTAINERS = frozenset({"layers", "layer", "h", "blocks", "block"})

# Attention vs MLP, decided on the module path after the layer index ("self_attn.q_proj"):
# 1. a container component decides: attention if one of ATTENTION_CONTAINERS appears, else MLP if one of
#    MLP_CONTAINERS appears (so GPT-2's attn.c_proj is attention and mlp.c_proj is MLP; RoBERTa's
#    attention.output.dense is attention and intermediate.dense is MLP);
# 2. else the last component: ATTENTION_NAMES → attention, MLP_NAMES → MLP (OPT's fc1/fc2 sit directly
#    in the layer);
# 3. else the path "output.dense" directly in the layer (BERT/RoBERTa's second FFN matrix) → MLP;
# 4. else "other".
ATTENTION_CONTAINERS = frozenset({"self_attn", "attn", "attention", "self_attention", "cross_attn", "encoder_attn"})
MLP_CONTAINERS = frozenset({"mlp", "feed_forward", "ffn", "intermediate"})
ATTENTION_NAMES = frozenset(
    {"q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "out_proj", "query", "key", "value", "c_attn", "Wqkv"}
)
MLP_NAMES = frozenset({"gate_proj", "up_proj", "down_proj", "gate_up_proj", "fc1", "fc2", "c_fc", "w1", "w2", "w3"})

DEPTH_GROUPS = ("early", "mid", "late")


def parse_layer_index(path: str) -> int | None:
    """The number after a ``layers``/``layer``/``h``/``blocks``/``block`` component of a module path
    (the last such pair if there are several), or ``None``.

    >>> parse_layer_index("base_model.model.model.layers.3.self_attn.q_proj")
    3
    """
    parts = path.split(".")
    index = None
    for container, number in zip(parts, parts[1:]):
        if container in LAYER_CONTAINERS and number.isdigit():
            index = int(number)
    return index


def _within_layer(path: str) -> list[str]:
    """Path components after the layer index (the whole path if there is none)."""
    parts = path.split(".")
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] in LAYER_CONTAINERS and parts[i + 1].isdigit():
            return parts[i + 2 :]
    return parts


def module_kind(name_or_path: str) -> str:
    """``"attention"``, ``"mlp"`` or ``"other"`` for a module path or a within-layer name (rules above)."""
    parts = _within_layer(name_or_path.split("/")[0])
    if any(part in ATTENTION_CONTAINERS for part in parts[:-1]):
        return "attention"
    if any(part in MLP_CONTAINERS for part in parts[:-1]):
        return "mlp"
    if parts[-1] in ATTENTION_NAMES:
        return "attention"
    if parts[-1] in MLP_NAMES or parts == ["output", "dense"]:
        return "mlp"
    return "other"


def depth_group(layer: int, num_layers: int) -> str:
    """``"early"``, ``"mid"`` or ``"late"``: the third of ``num_layers`` layer ``layer`` falls in
    (``⌊3 · layer / num_layers⌋``; 32 layers split 11 / 11 / 10)."""
    if not 0 <= layer < num_layers:
        raise ValueError(f"layer must be in [0, num_layers={num_layers}), got layer={layer}")
    return DEPTH_GROUPS[min(3 * layer // num_layers, 2)]


def _short_names(paths: Iterable[str]) -> dict[str, str]:
    """Shortest within-layer suffix telling each path apart from the others of its layer."""
    by_layer: dict[int | None, list[str]] = {}
    for path in paths:
        by_layer.setdefault(parse_layer_index(path), []).append(path)
    names: dict[str, str] = {}
    for group in by_layer.values():
        parts = {path: _within_layer(path) for path in group}
        for path, own in parts.items():
            others = [p for q, p in parts.items() if q != path]
            name = None
            for k in range(1, len(own) + 1):
                suffix = own[-k:]
                if all(len(other) < k or other[-k:] != suffix for other in others):
                    name = ".".join(suffix)
                    break
            if name is None:  # a suffix of another path, or identical within-layer paths (encoder/decoder)
                name = ".".join(own) if all(o != own for o in others) else path
            names[path] = name
    return names


@dataclass
class GateStats:
    """Streaming summary of recorded gate values g ∈ [0, 1] of one module (or a group of modules).

    ``histogram[k]`` counts values in ``[k/bins, (k+1)/bins)`` (the last bin includes 1). ``component_sums``
    (r,) sums each rank component's gate separately; it is ``None`` for groups merged across modules
    (component i of two modules are unrelated). ``paths`` lists the module paths summarised.
    """

    histogram: Tensor  # (bins,) int64
    count: Tensor  # () int64: number of recorded values (tokens × rank components)
    total: Tensor  # () float64: sum of values
    total_sq: Tensor  # () float64: sum of squared values
    component_sums: Tensor | None  # (r,) float64
    tokens: Tensor  # () int64: number of recorded tokens
    rank: int | None = None  # r of the module; None for merged groups
    paths: tuple[str, ...] = ()
    layer: int | None = None
    module: str = ""
    adapter: str = "default"

    @classmethod
    def empty(cls, bins: int, rank: int | None, device: torch.device | None = None, **info: Any) -> GateStats:
        return cls(
            histogram=torch.zeros(bins, dtype=torch.int64, device=device),
            count=torch.zeros((), dtype=torch.int64, device=device),
            total=torch.zeros((), dtype=torch.float64, device=device),
            total_sq=torch.zeros((), dtype=torch.float64, device=device),
            component_sums=None if rank is None else torch.zeros(rank, dtype=torch.float64, device=device),
            tokens=torch.zeros((), dtype=torch.int64, device=device),
            rank=rank,
            **info,
        )

    @property
    def bins(self) -> int:
        return self.histogram.numel()

    def add(self, gates: Tensor) -> None:
        """Fold gate values (tokens, r) into the summary (in place, on their device)."""
        values = gates.detach().to(torch.float64)  # (tokens, r)
        index = (values * self.bins).long().clamp_(0, self.bins - 1)  # (tokens, r): bin of each value
        self.histogram += torch.bincount(index.flatten(), minlength=self.bins)
        self.count += values.numel()
        self.tokens += values.shape[0]
        self.total += values.sum()
        self.total_sq += values.square().sum()
        if self.component_sums is not None:
            self.component_sums += values.sum(dim=0)  # (r,)

    @property
    def mean(self) -> float:
        """Mean gate value (NaN if nothing was recorded)."""
        count = int(self.count)
        return float(self.total) / count if count else math.nan

    @property
    def std(self) -> float:
        """Population standard deviation of the recorded values (NaN if nothing was recorded)."""
        count = int(self.count)
        if not count:
            return math.nan
        mean = float(self.total) / count
        return math.sqrt(max(float(self.total_sq) / count - mean * mean, 0.0))

    @property
    def component_means(self) -> list[float] | None:
        """Mean gate of each rank component (r,), or ``None`` for merged groups / before any token."""
        tokens = int(self.tokens)
        if self.component_sums is None or not tokens:
            return None
        return (self.component_sums / tokens).tolist()

    def normalized_histogram(self) -> list[float]:
        """Histogram as fractions summing to 1 (the paper's normalised histograms)."""
        count = int(self.count)
        return [c / count if count else math.nan for c in self.histogram.tolist()]

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "module": self.module,
            "adapter": self.adapter,
            "paths": list(self.paths),
            "rank": self.rank,
            "count": int(self.count),
            "tokens": int(self.tokens),
            "mean": self.mean,
            "std": self.std,
            "histogram": self.histogram.tolist(),
            "component_means": self.component_means,
        }

    @staticmethod
    def merge(stats: Iterable[GateStats], **info: Any) -> GateStats:
        """One summary of several (histograms, counts and sums add; component sums only within one module)."""
        stats = list(stats)
        if not stats:
            raise ValueError("merge needs at least one GateStats")
        bins = {s.bins for s in stats}
        if len(bins) != 1:
            raise ValueError(f"cannot merge histograms with different bin counts {sorted(bins)}")
        device = torch.device("cpu")
        merged = GateStats.empty(bins.pop(), rank=None, device=device, **info)
        for s in stats:
            merged.histogram += s.histogram.to(device)
            merged.count += s.count.to(device)
            merged.tokens += s.tokens.to(device)
            merged.total += s.total.to(device)
            merged.total_sq += s.total_sq.to(device)
        merged.paths = tuple(p for s in stats for p in s.paths)
        return merged


class GateRecorder:
    """Context manager recording gate values of every module with ``active_gates()``; see the module doc.

    Args:
        model: the model (a PEFT model, or any module containing :class:`~disel.layers.DiselLinear`).
        token_mask: optional bool mask (batch, seq), or generally of the layer input's leading shape
            ``x.shape[:-1]``; only ``True`` tokens are recorded. Change it per batch with
            :meth:`set_token_mask`.
        bins: number of equal-width histogram bins over [0, 1].
        num_layers: number of layers for :meth:`by_depth`; default: 1 + the largest layer index among the
            model's module paths (adapted or not).

    Raises (when recording): ``ValueError`` if the mask's shape differs from a layer input's leading
    shape; on entry, ``ValueError`` if the model has no module with ``active_gates()``.
    """

    def __init__(
        self, model: nn.Module, token_mask: Tensor | None = None, bins: int = 20, num_layers: int | None = None
    ) -> None:
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
            raise ValueError(f"bins must be a positive integer, got bins={bins!r}")
        if num_layers is not None and (
            isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1
        ):
            raise ValueError(f"num_layers must be a positive integer or None, got num_layers={num_layers!r}")
        self.model = model
        self.bins = bins
        self.num_layers = num_layers
        self._token_mask: Tensor | None = None
        self.set_token_mask(token_mask)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._stats: dict[tuple[str, str], GateStats] = {}  # (path, adapter) → summary
        self._names: dict[str, str] = {}  # path → short module name
        self._masks_by_device: dict[torch.device, Tensor] = {}
        self._model_num_layers: int | None = None  # counted from the model's module paths on entry

    # --- recording ----------------------------------------------------------------------------------

    def set_token_mask(self, token_mask: Tensor | None) -> None:
        """Record only tokens where ``token_mask`` is true (shape = the layer input's leading dims,
        e.g. (batch, seq)); ``None`` records every token. Applies to the following forward passes."""
        if token_mask is not None:
            token_mask = torch.as_tensor(token_mask)
            if token_mask.dtype != torch.bool:
                if token_mask.is_floating_point() or token_mask.is_complex():
                    raise ValueError(f"token_mask must be bool or 0/1 integers, got dtype {token_mask.dtype}")
                token_mask = token_mask != 0
        self._token_mask = token_mask
        self._masks_by_device = {}

    def __enter__(self) -> GateRecorder:
        if self._handles:
            raise RuntimeError("this GateRecorder is already recording (contexts cannot be nested)")
        modules = [
            (path, module)
            for path, module in self.model.named_modules()
            if callable(getattr(module, "active_gates", None))
        ]
        if not modules:
            raise ValueError(
                f"no module of the {type(self.model).__name__} has active_gates(): nothing to record "
                "(is this a DISeL model?)"
            )
        self._names.update(_short_names(path for path, _ in modules))
        indices = [parse_layer_index(path) for path, _ in self.model.named_modules()]
        self._model_num_layers = max((i for i in indices if i is not None), default=-1) + 1 or None
        try:
            for path, module in modules:
                self._handles.append(module.register_forward_hook(self._make_hook(path)))
        except BaseException:
            self._remove_hooks()
            raise
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._remove_hooks()

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @property
    def recording(self) -> bool:
        """Whether hooks are installed (inside the ``with`` block)."""
        return bool(self._handles)

    def _mask_for(self, x: Tensor, path: str) -> Tensor | None:
        mask = self._token_mask
        if mask is None:
            return None
        if tuple(mask.shape) != tuple(x.shape[:-1]):
            raise ValueError(
                f"token_mask has shape {tuple(mask.shape)} but the input of {path} has leading shape "
                f"{tuple(x.shape[:-1])} (x is {tuple(x.shape)}); set a mask matching each batch with set_token_mask"
            )
        cached = self._masks_by_device.get(x.device)
        if cached is None:
            cached = self._masks_by_device[x.device] = mask.to(x.device)
        return cached

    def _make_hook(self, path: str):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if not args or not isinstance(args[0], Tensor):
                return
            x = args[0]  # (..., d)
            gates = module.active_gates()
            if not gates:
                return
            mask = self._mask_for(x, path)
            with torch.no_grad():
                tokens = x.reshape(-1, x.shape[-1]) if mask is None else x[mask]  # (tokens, d)
                for adapter, gate in gates:
                    g = gate_values(tokens.to(gate.weight.dtype), gate.weight, gate.bias)  # (tokens, r)
                    key = (path, adapter)
                    stats = self._stats.get(key)
                    if stats is None:
                        stats = self._stats[key] = GateStats.empty(
                            self.bins,
                            rank=g.shape[-1],
                            device=g.device,
                            paths=(path,),
                            layer=parse_layer_index(path),
                            module=self._names[path],
                            adapter=adapter,
                        )
                    stats.add(g)

        return hook

    def reset(self) -> None:
        """Forget everything recorded so far (hooks stay as they are)."""
        self._stats = {}

    # --- reading ------------------------------------------------------------------------------------

    @property
    def stats(self) -> dict[tuple[int | None, str], GateStats]:
        """Per-module summaries keyed by ``(layer index, module name)``, in recording order."""
        adapters_per_path: dict[str, int] = {}
        for path, _ in self._stats:
            adapters_per_path[path] = adapters_per_path.get(path, 0) + 1
        result: dict[tuple[int | None, str], GateStats] = {}
        for (path, adapter), stats in self._stats.items():
            name = stats.module if adapters_per_path[path] == 1 else f"{stats.module}/{adapter}"
            result[(stats.layer, name)] = stats
        return result

    def _num_layers(self) -> int:
        if self.num_layers is not None:
            return self.num_layers
        if self._model_num_layers is not None:
            return self._model_num_layers
        raise ValueError("the model's module paths have no layer index; pass num_layers or group by module instead")

    def _group(self, key_of) -> dict[str, GateStats]:
        groups: dict[str, list[GateStats]] = {}
        for key, stats in self.stats.items():
            group = key_of(key)
            if group is not None:
                groups.setdefault(group, []).append(stats)
        return {name: GateStats.merge(members, module=name) for name, members in groups.items()}

    def by_depth(self) -> dict[str, GateStats]:
        """Summaries of the early / mid / late thirds of the layers (modules without a layer index are left out)."""
        num_layers = self._num_layers()
        grouped = self._group(lambda key: None if key[0] is None else depth_group(key[0], num_layers))
        return {name: grouped[name] for name in DEPTH_GROUPS if name in grouped}

    def by_module(self) -> dict[str, GateStats]:
        """Summaries per module name across layers (``"q_proj"``: every layer's q_proj)."""
        return self._group(lambda key: key[1])

    def by_kind(self) -> dict[str, GateStats]:
        """Summaries of attention vs MLP modules (see :func:`module_kind` for the mapping)."""
        return self._group(lambda key: module_kind(key[1]))

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python summary for the figure scripts: per-module entries and the three groupings."""
        edges = [k / self.bins for k in range(self.bins + 1)]
        per_module = [stats.to_dict() for stats in self.stats.values()]
        result: dict[str, Any] = {"bins": self.bins, "bin_edges": edges, "modules": per_module}
        if per_module:
            try:
                result["num_layers"] = self._num_layers()
                result["by_depth"] = {k: v.to_dict() for k, v in self.by_depth().items()}
            except ValueError:
                result["num_layers"] = None
            result["by_module"] = {k: v.to_dict() for k, v in self.by_module().items()}
            result["by_kind"] = {k: v.to_dict() for k, v in self.by_kind().items()}
        return result

    def save_json(self, path: str | os.PathLike) -> None:
        """Write :meth:`to_dict` as JSON atomically (a temporary file in the same folder, then ``os.replace``)."""
        write_text_atomic(path, json.dumps(self.to_dict(), indent=1, allow_nan=True))


def record_gates(
    model: nn.Module, token_mask: Tensor | None = None, bins: int = 20, num_layers: int | None = None
) -> GateRecorder:
    """``with record_gates(model) as rec: ...``: a :class:`GateRecorder` (see there for the arguments)."""
    return GateRecorder(model, token_mask=token_mask, bins=bins, num_layers=num_layers)

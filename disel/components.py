"""Gate statistics put to work: per-component statistics, pruning and a partial (static) merge (issue 11).

A DISeL layer is a sum of gated rank-one components, ``s · B diag(g(x)) A x = Σ_i s · g_i(x) (a_iᵀx) b_i``.
Per adapted layer and component ``i`` (``a_i`` row i of ``A``, ``b_i`` column i of ``B``):

* gate mean ``ḡ_i = E[g_i(x)]`` and standard deviation ``sd_i = sqrt(E[g_i²] − ḡ_i²)`` over the tokens seen;
* contribution ``c_i = s · E[g_i(x) · |a_iᵀx|] · ‖b_i‖``: the expected norm of the component's output, so
  removing a set ``S`` of components moves the layer output by at most ``Σ_{i∈S} c_i`` on average
  (triangle inequality), and a component with ``b_i = 0`` or a shut gate has ``c_i = 0``;
* merge error bound ``e_i = s · ‖b_i‖ · sd_i · sqrt(E[(a_iᵀx)²]) ≥ E‖s (g_i(x) − ḡ_i) b_i a_iᵀx‖``
  (Cauchy–Schwarz): the error of replacing the gate by its mean, i.e. of folding ``s ḡ_i b_i a_iᵀ`` into W0.

:func:`component_statistics` measures these on data (per named domain too), :func:`prune` removes
components (in place, per adapter; ranks written to ``rank_pattern`` so plain PEFT calls save and reload
the result), :func:`merge_static` folds the components whose gate is constant on all the data into the
base weights (exactly undone by :func:`unmerge_static`), and :func:`combine_cat` stacks adapters ("cat",
exact for DISeL). :func:`prune_adapter_dir` is the adapter-directory-in, adapter-directory-out form.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.pytorch_utils import Conv1D

from .functional import disel_update, gate_values
from .layers import DiselLinear
from .tuner.layer import DiselLayer

__all__ = [
    "CAT_ONLY_REASON",
    "AlignReport",
    "ComponentStatistics",
    "LayerComponents",
    "MergeReport",
    "OutputChange",
    "PruneReport",
    "align_components",
    "combine_cat",
    "component_statistics",
    "merge_static",
    "prune",
    "prune_adapter_dir",
    "unmerge_static",
]


# ----------------------------------------------------------------------------------------- the branches


@dataclass
class _Branch:
    """One adapter of one adapted layer: a standalone :class:`DiselLinear` or one adapter of a PEFT layer."""

    path: str  # module path relative to the base model (the key rank_pattern matches)
    adapter: str
    layer: nn.Module

    @property
    def peft(self) -> bool:
        return isinstance(self.layer, DiselLayer)

    def _get(self, name: str) -> nn.Module:
        return getattr(self.layer, name)[self.adapter] if self.peft else getattr(self.layer, name)

    @property
    def A(self) -> nn.Linear:  # (r, d) weight
        return self._get("disel_A")

    @property
    def B(self) -> nn.Linear:  # (m, r) weight
        return self._get("disel_B")

    @property
    def gate(self) -> nn.Linear:  # (r, d) weight, (r,) bias
        return self._get("disel_gate")

    @property
    def scaling(self) -> float:
        return float(self.layer.scaling[self.adapter] if self.peft else self.layer.scaling)

    @property
    def rank(self) -> int:
        return self.A.weight.shape[0]

    @property
    def base(self) -> nn.Module:
        return self.layer.get_base_layer() if self.peft else self.layer.base

    def adapter_input(self, x: Tensor) -> Tensor:
        """The layer input as the adapter reads it (eval mode: no dropout), in the adapter's dtype."""
        return x.to(self.gate.weight.dtype)

    def num_parameters(self) -> int:
        return sum(p.numel() for m in (self.A, self.B, self.gate) for p in m.parameters())

    def update(self, x: Tensor, components: Tensor) -> Tensor:
        """``s · Σ_{i∈components} g_i(x) (a_iᵀx) b_i``: (..., d) → (..., m), for a subset of components."""
        gate = self.gate
        return disel_update(
            x, self.A.weight[components], self.B.weight[:, components], gate.weight[components],
            gate.bias[components], self.scaling,
        )

    def static_update(self, x: Tensor, components: Tensor, gate_means: Tensor) -> Tensor:
        """``s · Σ_{i∈components} ḡ_i (a_iᵀx) b_i``, the fixed linear map a static merge folds into W0."""
        b_scaled = self.B.weight[:, components] * gate_means.to(self.B.weight.dtype)  # (m, k)
        return F.linear(F.linear(x, self.A.weight[components]), b_scaled) * self.scaling  # (..., m)


def _root(model: nn.Module) -> nn.Module:
    """The base model the adapter paths are relative to (PEFT's ``model.base_model.model``)."""
    from peft import PeftModel

    from .tuner.model import DiselModel

    if isinstance(model, PeftModel):
        model = model.base_model
    if isinstance(model, DiselModel):
        return model.model
    return model


def _tuner(model: nn.Module):
    """The :class:`~disel.tuner.DiselModel` of a PEFT model (``None`` for a plain model with DiselLinear)."""
    from peft import PeftModel

    from .tuner.model import DiselModel

    if isinstance(model, PeftModel):
        model = model.base_model
    return model if isinstance(model, DiselModel) else None


def _branches(model: nn.Module, adapter_name: str | None = None, active_only: bool = False) -> list[_Branch]:
    """Every adapter branch in ``model`` (optionally one adapter, or only those that act on the output)."""
    found = []
    for path, module in _root(model).named_modules():
        if isinstance(module, DiselLayer):
            names = [n for n, _ in module.active_gates()] if active_only else list(module.disel_A.keys())
            found += [_Branch(path, name, module) for name in names if adapter_name in (None, name)]
        elif isinstance(module, DiselLinear) and adapter_name in (None, "default"):
            found.append(_Branch(path, "default", module))
    return found


# ----------------------------------------------------------------------------------------- statistics


@dataclass
class LayerComponents:
    """Statistics of the ``rank`` components of one adapter in one layer (lists indexed by component)."""

    module: str  # path relative to the base model, e.g. "model.layers.3.self_attn.q_proj"
    adapter: str
    scaling: float  # s
    tokens: int  # number of input vectors the statistics are over
    gate_mean: list[float]  # ḡ_i
    gate_std: list[float]  # sd_i
    contribution: list[float]  # c_i = s · E[g_i |a_iᵀx|] · ‖b_i‖
    merge_error_bound: list[float]  # e_i = s · ‖b_i‖ · sd_i · sqrt(E[(a_iᵀx)²])
    b_norm: list[float]  # ‖b_i‖
    gate_correlation: list[list[float]] | None = None  # corr(g_i, g_j), with pairwise=True only

    @property
    def rank(self) -> int:
        return len(self.gate_mean)

    @property
    def key(self) -> tuple[str, str]:
        return self.module, self.adapter


@dataclass
class ComponentStatistics:
    """Per-layer component statistics: ``layers`` pooled over all data, ``domains`` per named data source."""

    layers: list[LayerComponents]
    domains: dict[str, list[LayerComponents]] = field(default_factory=dict)

    def get(self, module: str, adapter: str = "default", domain: str | None = None) -> LayerComponents:
        entries = self.layers if domain is None else self.domains[domain]
        for entry in entries:
            if entry.key == (module, adapter):
                return entry
        raise KeyError(f"no statistics for module {module!r}, adapter {adapter!r}")

    def max_gate_std(self, module: str, adapter: str = "default") -> list[float]:
        """Per component, the largest gate std over the pooled data and every domain (a gate must be
        constant on each domain it will meet, and across them, to be merged)."""
        stds = [self.get(module, adapter).gate_std] + [self.get(module, adapter, d).gate_std for d in self.domains]
        return [max(values) for values in zip(*stds)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": [asdict(e) for e in self.layers],
            "domains": {name: [asdict(e) for e in entries] for name, entries in self.domains.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ComponentStatistics:
        if not isinstance(data, Mapping) or "layers" not in data:
            raise ValueError("ComponentStatistics.from_dict expects a dict with a 'layers' list (from to_dict)")
        return cls(
            layers=[LayerComponents(**e) for e in data["layers"]],
            domains={name: [LayerComponents(**e) for e in entries] for name, entries in data.get("domains", {}).items()},
        )

    def save_json(self, path: str | os.PathLike) -> None:
        _write_json_atomic(path, self.to_dict())

    @classmethod
    def load_json(cls, path: str | os.PathLike) -> ComponentStatistics:
        with open(path) as f:
            return cls.from_dict(json.load(f))


class _Accumulator:
    """Streaming float64 sums per component over N tokens, gates taken about a shift c (the first batch's
    mean gate) so that a constant gate has a variance of exactly 0 (no cancellation in E[g²] − ḡ²):
    Σ(g − c), Σ(g − c)², Σ g·|aᵀx|, Σ (aᵀx)², and Σ (g − c)(g − c)ᵀ if pairwise."""

    def __init__(self, rank: int, device: torch.device, pairwise: bool = False) -> None:
        self.count = 0
        self.shift = torch.zeros(rank, dtype=torch.float64, device=device)
        self.sums = torch.zeros(4, rank, dtype=torch.float64, device=device)
        self.gram = torch.zeros(rank, rank, dtype=torch.float64, device=device) if pairwise else None

    def add(self, gates: Tensor, projections: Tensor) -> None:
        g, ax = gates.double(), projections.double()  # (N, r)
        if g.shape[0] == 0:
            return
        if self.count == 0:
            self.shift = g.mean(0)
        gc = g - self.shift  # (N, r)
        self.count += g.shape[0]
        self.sums += torch.stack([gc.sum(0), (gc * gc).sum(0), (g * ax.abs()).sum(0), (ax * ax).sum(0)])
        if self.gram is not None:
            self.gram += gc.T @ gc  # (r, r)

    def _shifted(self, shift: Tensor) -> tuple[Tensor, Tensor | None]:
        """The sums re-expressed about another shift (exact algebra, for pooling)."""
        d = self.shift - shift  # (g − shift) = (g − c) + d
        s1, s2 = self.sums[0], self.sums[1]
        sums = self.sums.clone()
        sums[0] = s1 + self.count * d
        sums[1] = s2 + 2 * d * s1 + self.count * d * d
        gram = None
        if self.gram is not None:
            gram = self.gram + torch.outer(s1, d) + torch.outer(d, s1) + self.count * torch.outer(d, d)
        return sums, gram

    def merged(self, other: _Accumulator) -> _Accumulator:
        out = _Accumulator(self.sums.shape[1], self.sums.device, self.gram is not None)
        if self.count == 0 or other.count == 0:
            source = other if self.count == 0 else self
            out.count, out.shift, out.sums, out.gram = source.count, source.shift, source.sums, source.gram
            return out
        out.count, out.shift = self.count + other.count, self.shift
        sums_other, gram_other = other._shifted(self.shift)
        out.sums = self.sums + sums_other
        out.gram = None if self.gram is None else self.gram + gram_other
        return out

    def summary(self, branch: _Branch) -> LayerComponents:
        n = max(self.count, 1)
        mean_gc, mean_gc2, mean_gax, mean_ax2 = (self.sums / n).cpu().unbind(0)
        mean_g = self.shift.cpu() + mean_gc
        std = (mean_gc2 - mean_gc**2).clamp_min(0).sqrt()
        b_norm = branch.B.weight.detach().double().norm(dim=0).cpu()  # (r,)
        s = branch.scaling
        correlation = None
        if self.gram is not None:
            covariance = self.gram.cpu() / n - torch.outer(mean_gc, mean_gc)  # (r, r)
            denominator = torch.outer(std, std)
            correlation = torch.where(denominator > 0, covariance / denominator.clamp_min(1e-300), 0.0).tolist()
        return LayerComponents(
            module=branch.path, adapter=branch.adapter, scaling=s, tokens=self.count,
            gate_mean=mean_g.tolist(), gate_std=std.tolist(), contribution=(s * mean_gax * b_norm).tolist(),
            merge_error_bound=(s * b_norm * std * mean_ax2.sqrt()).tolist(), b_norm=b_norm.tolist(),
            gate_correlation=correlation,
        )


def _call(model: nn.Module, batch: Any) -> Any:
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def _output_tensor(output: Any) -> Tensor:
    if isinstance(output, Tensor):
        return output
    if getattr(output, "logits", None) is not None:
        return output.logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise TypeError(f"cannot find the output tensor in a {type(output).__name__} (expected a tensor or .logits)")


def _token_mask(batch: Any, key: str | None) -> Tensor | None:
    if key is not None and isinstance(batch, Mapping) and isinstance(batch.get(key), Tensor):
        return batch[key].bool()
    return None


def _flat_tokens(x: Tensor, mask: Tensor | None) -> Tensor:
    """(..., d) → (N, d), keeping only masked-in positions when the mask matches x's leading shape."""
    if mask is not None and tuple(x.shape[:-1]) == tuple(mask.shape):
        return x[mask.to(x.device)]
    return x.reshape(-1, x.shape[-1])


@contextmanager
def _eval_no_grad(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _domains(batches: Any, argument: str = "batches") -> dict[str | None, Iterable]:
    """``{name: iterable}`` for a mapping of named data sources, ``{None: batches}`` for one source."""
    if isinstance(batches, Mapping):
        if not batches or not all(isinstance(k, str) for k in batches):
            raise ValueError(f"{argument} as a mapping must name its data sources with strings, got {list(batches)!r}")
        for name, source in batches.items():
            if isinstance(source, (Tensor, Mapping)) or not isinstance(source, Iterable):
                raise TypeError(
                    f"{argument}[{name!r}] must be an iterable of batches (e.g. a list), got {type(source).__name__}"
                )
        return dict(batches)
    if isinstance(batches, Tensor) or not isinstance(batches, Iterable):
        raise TypeError(f"{argument} must be an iterable of batches or a dict of them, got {type(batches).__name__}")
    return {None: batches}


def component_statistics(
    model: nn.Module,
    batches: Iterable | Mapping[str, Iterable],
    *,
    adapter_name: str | None = None,
    token_mask_key: str | None = "attention_mask",
    pairwise: bool = False,
) -> ComponentStatistics:
    """Measure per-component gate mean/std, contribution and merge error bound (module docstring) on data.

    Args:
        model: a PEFT DISeL model, or any model containing :class:`~disel.DiselLinear` layers.
        batches: an iterable of batches, or ``{"math": batches, "english": batches}`` for per-domain
            statistics (``layers`` then pools all domains). A batch is a tensor (``model(batch)``), a tuple
            (``model(*batch)``) or a dict (``model(**batch)``).
        adapter_name: only this adapter (default: every adapter that is active).
        token_mask_key: in dict batches, the (batch, seq) mask of tokens to count (padding left out).
        pairwise: also record the gate correlation matrix (r × r per layer), for :func:`align_components`.

    The model runs in eval mode under ``no_grad`` (no dropout); its training mode is restored after.
    """
    branches = _branches(model, adapter_name, active_only=True)
    if not branches:
        raise ValueError(f"component_statistics: no active DISeL adapter{'' if adapter_name is None else ' ' + repr(adapter_name)} in the model")
    sources = _domains(batches)
    per_domain: dict[str | None, dict[int, _Accumulator]] = {}
    for name, source in sources.items():
        accumulators = {i: _Accumulator(b.rank, b.A.weight.device, pairwise) for i, b in enumerate(branches)}
        state = {"mask": None}
        by_layer: dict[int, list[int]] = {}
        for i, branch in enumerate(branches):
            by_layer.setdefault(id(branch.layer), []).append(i)

        def make_hook(indices: list[int], state=state, accumulators=accumulators) -> Callable:
            def hook(module: nn.Module, args: tuple, output: Any) -> None:
                for i in indices:
                    branch = branches[i]
                    x = _flat_tokens(branch.adapter_input(args[0]), state["mask"])  # (N, d)
                    gate = branch.gate
                    accumulators[i].add(gate_values(x, gate.weight, gate.bias), F.linear(x, branch.A.weight))

            return hook

        layers = {id(b.layer): b.layer for b in branches}
        handles = [layers[key].register_forward_hook(make_hook(idx)) for key, idx in by_layer.items()]
        try:
            with _eval_no_grad(model):
                for batch in source:
                    state["mask"] = _token_mask(batch, token_mask_key)
                    _call(model, batch)
        finally:
            for handle in handles:
                handle.remove()
        per_domain[name] = accumulators

    names = list(per_domain)
    pooled = per_domain[names[0]]
    for name in names[1:]:
        pooled = {i: acc.merged(per_domain[name][i]) for i, acc in pooled.items()}
    if all(acc.count == 0 for acc in pooled.values()):
        raise ValueError("component_statistics: the batches reached no adapted layer (empty data?)")
    summary = [pooled[i].summary(b) for i, b in enumerate(branches)]
    domains = {}
    if names != [None]:
        domains = {name: [per_domain[name][i].summary(b) for i, b in enumerate(branches)] for name in names}
    return ComponentStatistics(layers=summary, domains=domains)


# ----------------------------------------------------------------------------------------- measuring


@dataclass
class OutputChange:
    """How much the model output moved: ``relative_rms = ‖y' − y‖ / ‖y‖`` over all outputs, and the max |y' − y|."""

    relative_rms: float
    max_abs: float
    batches: int


def _measure_output_change(
    model: nn.Module, batches: Iterable, corrections: dict[int, tuple[nn.Module, list[Callable[[Tensor], Tensor]]]]
) -> OutputChange:
    """Output change when each adapted layer's output gets ``+ correction(x)`` (x: its input), measured
    batch by batch with and without the corrections (nothing is stored between batches)."""
    state = {"on": False}

    def make_hook(functions: list[Callable[[Tensor], Tensor]]) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor | None:
            if not state["on"]:
                return None
            return output + sum(f(args[0]) for f in functions).to(output.dtype)

        return hook

    handles = [layer.register_forward_hook(make_hook(fns)) for layer, fns in corrections.values()]
    diff_sq = ref_sq = 0.0
    max_abs, count = 0.0, 0
    try:
        with _eval_no_grad(model):
            for source in _domains(batches).values():
                for batch in source:
                    state["on"] = False
                    y0 = _output_tensor(_call(model, batch)).double()
                    state["on"] = True
                    y1 = _output_tensor(_call(model, batch)).double()
                    diff_sq += float(((y1 - y0) ** 2).sum())
                    ref_sq += float((y0**2).sum())
                    max_abs = max(max_abs, float((y1 - y0).abs().max()) if y0.numel() else 0.0)
                    count += 1
    finally:
        for handle in handles:
            handle.remove()
    return OutputChange(relative_rms=math.sqrt(diff_sq / ref_sq) if ref_sq > 0 else 0.0, max_abs=max_abs, batches=count)


# ----------------------------------------------------------------------------------------- editing branches


def _sliced(module: nn.Linear, rows: Tensor | None = None, cols: Tensor | None = None) -> nn.Linear:
    """A new module of the same type holding ``weight[rows]`` / ``weight[:, cols]`` (and ``bias[rows]``)."""
    weight = module.weight.detach()
    weight = weight[rows] if rows is not None else weight[:, cols]
    has_bias = module.bias is not None
    out_features, in_features = weight.shape
    with warnings.catch_warnings():  # a rank-0 module's init warns that it initialises nothing
        warnings.simplefilter("ignore", UserWarning)
        new = type(module)(in_features, out_features, bias=has_bias, device="meta")
    new.weight = nn.Parameter(weight.clone(), requires_grad=module.weight.requires_grad)
    if has_bias:
        bias = module.bias.detach()
        new.bias = nn.Parameter((bias[rows] if rows is not None else bias).clone(), requires_grad=module.bias.requires_grad)
    return new


def _saved_modules(branch: _Branch) -> dict[str, nn.Module]:
    names = ("disel_A", "disel_B", "disel_gate") + (("disel_dropout",) if branch.peft else ())
    return {name: branch._get(name) for name in names}


def _keep_components(branch: _Branch, keep: Tensor) -> None:
    """Keep only components ``keep`` (sorted indices) of the branch. A PEFT layer left with none loses the
    adapter (its forward skips adapters it does not hold); a standalone layer keeps a rank-0 branch (update 0)."""
    layer, name = branch.layer, branch.adapter
    if branch.peft and keep.numel() == 0:
        for attribute in ("disel_A", "disel_B", "disel_gate", "disel_dropout"):
            del getattr(layer, attribute)[name]
        layer.r.pop(name, None)
        layer.scaling.pop(name, None)
        return
    new = {"disel_A": _sliced(branch.A, rows=keep), "disel_B": _sliced(branch.B, cols=keep),
           "disel_gate": _sliced(branch.gate, rows=keep)}
    if branch.peft:
        for attribute, module in new.items():
            getattr(layer, attribute)[name] = module
        layer.r[name] = int(keep.numel())
    else:
        for attribute, module in new.items():
            setattr(layer, attribute, module)
        layer.r = int(keep.numel())


def _restore_modules(branch: _Branch, modules: dict[str, nn.Module], rank: int, scaling: float) -> None:
    layer, name = branch.layer, branch.adapter
    if branch.peft:
        for attribute, module in modules.items():
            getattr(layer, attribute)[name] = module
        layer.r[name], layer.scaling[name] = rank, scaling
    else:
        for attribute, module in modules.items():
            setattr(layer, attribute, module)
        layer.r = rank


def _sync_peft_config(model: nn.Module, adapters: Iterable[str]) -> None:
    """Write each adapter's current per-layer ranks into its config: one exact ``rank_pattern`` /
    ``alpha_pattern`` entry per layer (alpha = s · r, so the layer keeps its scaling), and layers that lost
    the adapter into ``exclude_modules`` — so ``save_pretrained`` + ``PeftModel.from_pretrained`` rebuild it."""
    tuner = _tuner(model)
    if tuner is None:
        return
    layers = [(path, m) for path, m in tuner.model.named_modules() if isinstance(m, DiselLayer)]
    for adapter in set(adapters):
        config = tuner.peft_config[adapter]
        ranks, alphas, excluded = {}, {}, []
        for path, layer in layers:
            key = "^" + re.escape(path)  # matches exactly this module under PEFT's get_pattern_key
            if adapter in layer.disel_A:
                ranks[key] = int(layer.r[adapter])
                alphas[key] = float(layer.scaling[adapter]) * int(layer.r[adapter])
            else:
                excluded.append(path)
        # Exact entries first: get_pattern_key takes the first key that matches.
        config.rank_pattern = {**ranks, **{k: v for k, v in config.rank_pattern.items() if k not in ranks}}
        config.alpha_pattern = {**alphas, **{k: v for k, v in config.alpha_pattern.items() if k not in alphas}}
        if excluded:
            if isinstance(config.exclude_modules, str):
                config.exclude_modules = "|".join([f"(?:{config.exclude_modules})"] + [re.escape(p) for p in excluded])
            else:
                config.exclude_modules = set(config.exclude_modules or ()) | set(excluded)


def _check_against(branch: _Branch, entry: LayerComponents) -> None:
    if entry.rank != branch.rank:
        raise ValueError(
            f"stats for {branch.path!r} (adapter {branch.adapter!r}) cover {entry.rank} components but the layer now "
            f"has {branch.rank}: recompute component_statistics on the model as it is now"
        )


def _matched(model: nn.Module, stats: ComponentStatistics, adapter_name: str | None) -> list[tuple[_Branch, LayerComponents]]:
    if not isinstance(stats, ComponentStatistics):
        raise TypeError(f"stats must be a ComponentStatistics (from component_statistics), got {type(stats).__name__}")
    branches = {(b.path, b.adapter): b for b in _branches(model, adapter_name)}
    pairs = []
    for entry in stats.layers:
        if adapter_name is not None and entry.adapter != adapter_name:
            continue
        branch = branches.get(entry.key)
        if branch is None:
            raise ValueError(f"stats name module {entry.module!r} with adapter {entry.adapter!r}, which the model does not hold")
        _check_against(branch, entry)
        pairs.append((branch, entry))
    if not pairs:
        raise ValueError(f"stats hold no layer of adapter {adapter_name!r}" if adapter_name else "stats hold no layer")
    return pairs


def _layer_name(branch: _Branch) -> str:
    return branch.path if branch.adapter == "default" else f"{branch.path}/{branch.adapter}"


# ----------------------------------------------------------------------------------------- prune


@dataclass
class PruneReport:
    """What :func:`prune` did: kept component indices and rank per layer, adapter parameters before/after,
    and the measured output change on the given data (``None`` without data)."""

    kept: dict[str, list[int]]
    rank_before: dict[str, int]
    rank_after: dict[str, int]
    parameters_before: int
    parameters_after: int
    removed_layers: list[str]
    output_change: OutputChange | None = None
    criterion: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _select_kept(pairs, threshold: float | None, keep_fraction: float | None) -> list[Tensor]:
    if (threshold is None) == (keep_fraction is None):
        raise ValueError("prune needs exactly one of threshold= (a contribution) or keep_fraction= (in (0, 1])")
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold) or threshold < 0:
            raise ValueError(f"threshold must be a finite number >= 0 (a contribution), got threshold={threshold!r}")
        return [torch.tensor([i for i, c in enumerate(e.contribution) if c > threshold], dtype=torch.long) for _, e in pairs]
    if isinstance(keep_fraction, bool) or not isinstance(keep_fraction, (int, float)) or not 0 < keep_fraction <= 1:
        raise ValueError(f"keep_fraction must be a number in (0, 1], got keep_fraction={keep_fraction!r}")
    # One ranking over all layers: per-layer ranks then follow the data instead of one global r.
    everything = [(c, p, i) for p, (_, e) in enumerate(pairs) for i, c in enumerate(e.contribution)]
    n_keep = math.ceil(keep_fraction * len(everything))
    chosen = sorted(everything, key=lambda t: -t[0])[:n_keep]
    kept: list[list[int]] = [[] for _ in pairs]
    for _, p, i in chosen:
        kept[p].append(i)
    return [torch.tensor(sorted(k), dtype=torch.long) for k in kept]


def prune(
    model: nn.Module,
    stats: ComponentStatistics,
    *,
    threshold: float | None = None,
    keep_fraction: float | None = None,
    adapter_name: str | None = None,
    batches: Iterable | Mapping[str, Iterable] | None = None,
) -> PruneReport:
    """Remove components in place by contribution: ``c_i > threshold`` kept, or the ``keep_fraction`` of all
    components (over all layers) with the largest contribution kept.

    Per adapter (``adapter_name``, default every adapter in ``stats``). A PEFT layer left with no component
    loses the adapter; the adapter config gets the new ranks (``rank_pattern``/``alpha_pattern``, one exact
    entry per layer) and the emptied layers (``exclude_modules``), so ``save_pretrained`` and
    ``PeftModel.from_pretrained`` give back the pruned model. With ``batches``, the output change is measured
    (before the change, by subtracting the removed components' output at each layer). Optimizer state held
    for the old parameters no longer applies: build a new optimizer to train on.
    """
    pairs = _matched(model, stats, adapter_name)
    kept = _select_kept(pairs, threshold, keep_fraction)
    output_change = None
    if batches is not None:
        corrections: dict[int, tuple[nn.Module, list]] = {}
        for (branch, _), keep in zip(pairs, kept):
            removed = torch.tensor(sorted(set(range(branch.rank)) - set(keep.tolist())), dtype=torch.long)
            if removed.numel():
                fn = (lambda x, b=branch, r=removed: -b.update(b.adapter_input(x), r))
                corrections.setdefault(id(branch.layer), (branch.layer, []))[1].append(fn)
        output_change = _measure_output_change(model, batches, corrections)
    before = sum(b.num_parameters() for b, _ in pairs)
    report = PruneReport(
        kept={}, rank_before={}, rank_after={}, parameters_before=before, parameters_after=0, removed_layers=[],
        output_change=output_change, criterion={"threshold": threshold, "keep_fraction": keep_fraction},
    )
    for (branch, _), keep in zip(pairs, kept):
        name = _layer_name(branch)
        report.rank_before[name] = branch.rank
        _keep_components(branch, keep.to(branch.A.weight.device))
        report.kept[name] = keep.tolist()
        report.rank_after[name] = int(keep.numel())
        if branch.peft and keep.numel() == 0:
            report.removed_layers.append(name)
        else:
            report.parameters_after += branch.num_parameters()
    _sync_peft_config(model, [b.adapter for b, _ in pairs])
    return report


# ----------------------------------------------------------------------------------------- align


@dataclass
class AlignReport:
    """What :func:`align_components` did: per layer, the groups of components that now share one gate
    (component indices), and the measured output change on the given data (``None`` without data)."""

    groups: dict[str, list[list[int]]]
    min_gate_correlation: float
    output_change: OutputChange | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _correlated_groups(correlation: list[list[float]], stds: list[float], threshold: float) -> list[list[int]]:
    """Connected components of the graph "corr(g_i, g_j) ≥ threshold" (constant gates stay alone)."""
    r = len(stds)
    parent = list(range(r))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(r):
        for j in range(i + 1, r):
            if stds[i] > 0 and stds[j] > 0 and correlation[i][j] >= threshold:
                parent[find(i)] = find(j)
    groups: dict[int, list[int]] = {}
    for i in range(r):
        groups.setdefault(find(i), []).append(i)
    return [g for g in groups.values() if len(g) > 1]


def align_components(
    model: nn.Module,
    stats: ComponentStatistics,
    *,
    min_gate_correlation: float = 0.99,
    adapter_name: str | None = None,
    batches: Iterable | Mapping[str, Iterable] | None = None,
) -> AlignReport:
    """Re-express components that share (nearly) one gate in the SVD basis of their summed update, in place.

    Components whose gates are perfectly correlated act as one gate times ``Σ_i b_i a_iᵀ``; gradient
    training spreads such an update over all of them, so no single component is negligible and
    :func:`prune` cannot lower the rank. Within each group of components with pairwise gate correlation
    ``≥ min_gate_correlation`` (``stats`` from ``component_statistics(..., pairwise=True)``), ``B_G A_G``
    is replaced by its SVD factors ``b'_j = u_j √σ_j``, ``a'_j = √σ_j v_jᵀ`` (same number of components,
    so the rank does not change) and every gate of the group by one gate: the contribution-weighted mean
    of the group's ``(W_g, b_g)`` rows. Exact when the group's gates are identical; otherwise the output
    change is measured on ``batches``. The small singular directions then have small contributions:
    recompute the statistics and :func:`prune` them.
    """
    if not 0 < min_gate_correlation <= 1:
        raise ValueError(f"min_gate_correlation must be in (0, 1], got min_gate_correlation={min_gate_correlation!r}")
    pairs = _matched(model, stats, adapter_name)
    plan = []
    for branch, entry in pairs:
        if entry.gate_correlation is None:
            raise ValueError("align_components needs component_statistics(..., pairwise=True) (gate correlations)")
        groups = _correlated_groups(entry.gate_correlation, entry.gate_std, min_gate_correlation)
        new = {}
        with torch.no_grad():
            A, B = branch.A.weight.detach().double(), branch.B.weight.detach().double()
            W, b = branch.gate.weight.detach().double(), branch.gate.bias.detach().double()
            A, B, W, b = A.clone(), B.clone(), W.clone(), b.clone()
            for group in groups:
                index = torch.tensor(group, device=A.device)
                U, S, Vh = torch.linalg.svd(B[:, index] @ A[index], full_matrices=False)  # (m, k), (k,), (k, d)
                k = len(group)
                root = S[:k].sqrt()
                B[:, index] = U[:, :k] * root
                A[index] = root[:, None] * Vh[:k]
                weights = torch.tensor([entry.contribution[i] for i in group], dtype=torch.float64, device=A.device)
                weights = weights / weights.sum() if float(weights.sum()) > 0 else torch.full_like(weights, 1 / k)
                W[index] = (weights[:, None] * W[index]).sum(0)
                b[index] = (weights * b[index]).sum()
            new = {"A": A, "B": B, "W": W, "b": b}
        plan.append((branch, groups, new))
    output_change = None
    if batches is not None:
        corrections: dict[int, tuple[nn.Module, list]] = {}
        for branch, groups, new in plan:
            if groups:
                def fn(x, br=branch, p=new):
                    x = br.adapter_input(x)
                    dt = br.A.weight.dtype
                    aligned = disel_update(x, p["A"].to(dt), p["B"].to(dt), p["W"].to(dt), p["b"].to(dt), br.scaling)
                    return aligned - br.update(x, torch.arange(br.rank, device=x.device))

                corrections.setdefault(id(branch.layer), (branch.layer, []))[1].append(fn)
        output_change = _measure_output_change(model, batches, corrections)
    report = AlignReport(groups={}, min_gate_correlation=float(min_gate_correlation), output_change=output_change)
    for branch, groups, new in plan:
        report.groups[_layer_name(branch)] = groups
        if groups:
            with torch.no_grad():
                branch.A.weight.copy_(new["A"])
                branch.B.weight.copy_(new["B"])
                branch.gate.weight.copy_(new["W"])
                branch.gate.bias.copy_(new["b"])
    return report


# ----------------------------------------------------------------------------------------- static merge


@dataclass
class MergeReport:
    """What :func:`merge_static` did: folded component indices and remaining (gated) rank per layer, the
    measured output error on the given data (``None`` without data) and the summed error bound."""

    merged: dict[str, list[int]]
    remaining_rank: dict[str, int]
    std_threshold: float
    output_change: OutputChange | None = None
    error_bound: dict[str, float] = field(default_factory=dict)
    fully_static: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _StaticMerge:
    """Everything needed to undo one static merge on one branch exactly (kept on the layer, never saved)."""

    adapter: str
    weight_before: Tensor  # the base weight before the fold (a copy)
    modules: dict[str, nn.Module]  # the branch's modules before the fold (the originals)
    rank: int
    scaling: float
    delta: Tensor  # the folded s · B_S diag(ḡ_S) A_S, (m, d), for inspection
    config_before: Any = None
    sequence: int = field(default_factory=lambda: next(_FOLD_SEQUENCE))  # order of folds across layers


_FOLD_SEQUENCE = itertools.count()


_STATIC_MERGES = "_disel_static_merges"


def _fold(branch: _Branch, components: Tensor, gate_means: Tensor) -> Tensor:
    """Add ``s · B_S diag(ḡ_S) A_S`` to the base weight; returns that delta (m, d)."""
    base = branch.base
    if not isinstance(base, (nn.Linear, Conv1D)) or not base.weight.dtype.is_floating_point:
        raise TypeError(
            f"merge_static folds into a floating-point nn.Linear / Conv1D weight; {branch.path!r} has "
            f"{type(base).__name__} with dtype {getattr(base.weight, 'dtype', None)} (quantized bases cannot be folded into)"
        )
    with torch.no_grad():
        A = branch.A.weight[components].double()  # (k, d)
        B = branch.B.weight[:, components].double() * gate_means.double().to(A.device)  # (m, k)
        delta = (B @ A) * branch.scaling  # (m, d)
        weight = base.weight
        weight.add_((delta if isinstance(base, nn.Linear) else delta.t()).to(weight.device, weight.dtype))
    return delta


def merge_static(
    model: nn.Module,
    stats: ComponentStatistics,
    *,
    std_threshold: float,
    adapter_name: str | None = None,
    batches: Iterable | Mapping[str, Iterable] | None = None,
) -> MergeReport:
    """Fold the components whose gate is (nearly) constant into the base weights, keep the rest gated.

    A component is static when its gate standard deviation is below ``std_threshold`` on the pooled data
    and on every domain of ``stats``; it is folded as ``W0 += s · ḡ_i · b_i a_iᵀ`` (ḡ_i its pooled gate
    mean) and removed from the adapter. The fold is recorded on the layer and :func:`unmerge_static`
    undoes it exactly (the weights and parameters before are kept, as copies / the original modules).
    ``merge_and_unload`` still refuses while any gated component is left; once every component of every
    layer is folded (``report.fully_static``) it merges completely. The saved adapter of a partially
    merged model holds only the gated rest: deploy the merged model itself (or undo first to save).
    The folds live in the base weights, so ``disable_adapter()`` and ``unload()`` keep them: call
    :func:`unmerge_static` first to get the pre-trained base back.

    With ``batches``, the output error is measured before the fold, by replacing each static component's
    gate by its mean at each layer: ``E‖s (g_i(x) − ḡ_i) b_i a_iᵀx‖`` summed through the model.
    """
    if isinstance(std_threshold, bool) or not isinstance(std_threshold, (int, float)) or not (
        math.isfinite(std_threshold) and std_threshold >= 0
    ):
        raise ValueError(f"std_threshold must be a finite number >= 0, got std_threshold={std_threshold!r}")
    pairs = _matched(model, stats, adapter_name)
    plan = []
    for branch, entry in pairs:
        stds = stats.max_gate_std(entry.module, entry.adapter)
        static = torch.tensor([i for i, sd in enumerate(stds) if sd < std_threshold], dtype=torch.long)
        means = torch.tensor(entry.gate_mean, dtype=torch.float64)[static]
        plan.append((branch, entry, static, means))
    output_change = None
    if batches is not None:
        corrections: dict[int, tuple[nn.Module, list]] = {}
        for branch, _, static, means in plan:
            if static.numel():
                def fn(x, b=branch, s=static, g=means):
                    x = b.adapter_input(x)
                    return b.static_update(x, s, g) - b.update(x, s)

                corrections.setdefault(id(branch.layer), (branch.layer, []))[1].append(fn)
        output_change = _measure_output_change(model, batches, corrections)
    tuner = _tuner(model)
    report = MergeReport(merged={}, remaining_rank={}, std_threshold=float(std_threshold), output_change=output_change)
    for branch, entry, static, means in plan:
        name = _layer_name(branch)
        report.merged[name] = static.tolist()
        report.error_bound[name] = float(sum(entry.merge_error_bound[i] for i in static.tolist()))
        if static.numel() == 0:
            report.remaining_rank[name] = branch.rank
            continue
        record = _StaticMerge(
            adapter=branch.adapter, weight_before=branch.base.weight.detach().clone(), modules=_saved_modules(branch),
            rank=branch.rank, scaling=branch.scaling, delta=torch.empty(0),
            config_before=None if tuner is None else copy.deepcopy(tuner.peft_config[branch.adapter]),
        )
        record.delta = _fold(branch, static.to(branch.A.weight.device), means)
        keep = torch.tensor(sorted(set(range(branch.rank)) - set(static.tolist())), dtype=torch.long)
        _keep_components(branch, keep.to(branch.A.weight.device))
        report.remaining_rank[name] = int(keep.numel())
        records = branch.layer.__dict__.setdefault(_STATIC_MERGES, [])
        records.append(record)
    _sync_peft_config(model, [b.adapter for b, *_ in plan])
    report.fully_static = all(not _branch_components(model, b.adapter) for b, *_ in plan)
    return report


def _branch_components(model: nn.Module, adapter: str) -> int:
    return sum(b.rank for b in _branches(model, adapter))


def unmerge_static(model: nn.Module) -> int:
    """Undo every :func:`merge_static` on ``model`` exactly (base weights, adapter parameters and config
    restored bit for bit); returns the number of layer folds undone."""
    undone = 0
    tuner = _tuner(model)
    earliest: dict[str, _StaticMerge] = {}  # per adapter, the first fold: its config is the one before any fold
    for path, layer in _root(model).named_modules():
        records = layer.__dict__.get(_STATIC_MERGES)
        if not records:
            continue
        while records:
            record = records.pop()
            branch = _Branch(path, record.adapter, layer)
            with torch.no_grad():
                branch.base.weight.copy_(record.weight_before)
            _restore_modules(branch, record.modules, record.rank, record.scaling)
            if record.adapter not in earliest or record.sequence < earliest[record.adapter].sequence:
                earliest[record.adapter] = record
            undone += 1
    if tuner is not None:
        for adapter, record in earliest.items():
            if record.config_before is not None:
                tuner.peft_config[adapter] = record.config_before
            # A prune after the merge changed ranks that config does not know: write the ranks as they are.
            config = tuner.peft_config[adapter]
            for path, layer in tuner.model.named_modules():
                if isinstance(layer, DiselLayer) and adapter in layer.disel_A:
                    r, alpha = config.rank_and_alpha(path)
                    if r != layer.r[adapter] or not math.isclose(alpha / r, layer.scaling[adapter], rel_tol=1e-12):
                        _sync_peft_config(model, [adapter])
                        break
    return undone


def has_static_merges(layer: nn.Module) -> bool:
    """Whether :func:`merge_static` folded components into this layer's base weight (and not undone)."""
    return bool(layer.__dict__.get(_STATIC_MERGES))


# ----------------------------------------------------------------------------------------- adapter dirs


def _write_json_atomic(path: str | os.PathLike, payload: Any) -> None:
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".disel-", suffix=".json.tmp", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=1, allow_nan=True)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def prune_adapter_dir(
    adapter_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    stats: ComponentStatistics | str | os.PathLike,
    *,
    base_model: nn.Module | None = None,
    threshold: float | None = None,
    keep_fraction: float | None = None,
    batches: Iterable | Mapping[str, Iterable] | None = None,
    report_name: str = "prune_report.json",
) -> PruneReport:
    """Adapter directory in, pruned adapter directory + ``report_name`` (JSON) out (for a CLI).

    ``base_model`` defaults to ``AutoModelForCausalLM.from_pretrained`` of the adapter config's
    ``base_model_name_or_path`` (a local path; nothing is downloaded by this function itself).
    ``stats`` is a :class:`ComponentStatistics` or the path of its JSON.
    """
    from peft import PeftConfig, PeftModel

    if os.path.abspath(adapter_dir) == os.path.abspath(out_dir):
        raise ValueError(f"out_dir must differ from adapter_dir (got {os.fspath(out_dir)!r} for both)")
    if os.path.isfile(out_dir):
        raise ValueError(f"out_dir must be a directory, got the file {os.fspath(out_dir)!r}")
    if not isinstance(stats, ComponentStatistics):
        stats = ComponentStatistics.load_json(stats)
    if base_model is None:
        from transformers import AutoModelForCausalLM

        base_model = AutoModelForCausalLM.from_pretrained(PeftConfig.from_pretrained(adapter_dir).base_model_name_or_path)
    model = PeftModel.from_pretrained(base_model, os.fspath(adapter_dir))
    report = prune(model, stats, threshold=threshold, keep_fraction=keep_fraction, batches=batches)
    model.save_pretrained(os.fspath(out_dir))
    _write_json_atomic(os.path.join(out_dir, report_name), report.to_dict())
    return report


# ----------------------------------------------------------------------------------------- composition

CAT_ONLY_REASON = (
    "DISeL adapters combine only with combination_type='cat': a DISeL update s · B diag(g(x)) A x has no "
    "fixed weight ΔW (each component carries its own input-dependent gate), so combinations that sum or "
    "SVD-compress B A products, or average A, B and W_g entry-wise (linear, svd, ties, dare_*, "
    "magnitude_prune*), do not give the weighted sum of the adapters' gated updates. 'cat' stacks the "
    "components with their gates and is exact (the new rank is the sum of the ranks)."
)


def combine_cat(
    tuner: nn.Module,
    adapters: Sequence[str],
    weights: Sequence[float],
    adapter_name: str,
    *,
    combination_type: str = "cat",
    **unused_options: Any,
) -> None:
    """Add ``adapter_name`` computing exactly ``Σ_k weights[k] · update_k(x)`` on every layer.

    Per layer, the components of the adapters present there are stacked: ``A``, ``W_g``, ``b_g`` rows
    concatenated, ``B`` columns concatenated after scaling by ``weights[k] · s_k``, and the new scaling is
    1 (``lora_alpha = r``). The new config targets exactly those layers, with their ranks in
    ``rank_pattern``, so it saves and reloads with plain PEFT calls. The new adapter is not activated.
    """
    import dataclasses

    from .tuner.model import DiselModel

    if isinstance(tuner, nn.Module) and not isinstance(tuner, DiselModel):
        tuner = _tuner(tuner)
    if not isinstance(tuner, DiselModel):
        raise TypeError("combine_cat needs a PEFT DISeL model (peft.get_peft_model(model, DiselConfig(...)))")
    if combination_type != "cat":
        raise ValueError(f"combination_type={combination_type!r} is not supported. {CAT_ONLY_REASON}")
    options = {k: v for k, v in unused_options.items() if v is not None and not (k == "svd_full_matrices" and v is True)
               and not (k == "majority_sign_method" and v == "total")}
    if options:
        raise ValueError(f"add_weighted_adapter: {sorted(options)} apply to other combination types only. {CAT_ONLY_REASON}")
    if isinstance(adapters, str) or not isinstance(adapters, Sequence) or not adapters:
        raise ValueError(f"adapters must be a non-empty list of adapter names, got adapters={adapters!r}")
    missing = [a for a in adapters if a not in tuner.peft_config]
    if missing:
        raise ValueError(f"adapters {missing} do not exist; the model holds {sorted(tuner.peft_config)}")
    if len(set(adapters)) != len(adapters):
        raise ValueError(f"adapters must not repeat a name, got adapters={list(adapters)!r}")
    if isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence) or len(weights) != len(adapters) or not all(
        isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) for w in weights
    ):
        raise ValueError(f"weights must be {len(adapters)} finite numbers (one per adapter), got weights={weights!r}")
    if not isinstance(adapter_name, str) or not adapter_name or adapter_name in tuner.peft_config:
        raise ValueError(f"adapter_name must be a new adapter name, got adapter_name={adapter_name!r} "
                         f"(existing: {sorted(tuner.peft_config)})")
    with_heads = [a for a in adapters if tuner.peft_config[a].modules_to_save]
    if with_heads:
        raise ValueError(f"adapters {with_heads} train modules_to_save (full modules), which cannot be stacked")

    layers = [(path, m) for path, m in tuner.model.named_modules() if isinstance(m, DiselLayer)]
    plan = []  # (path, layer, [(adapter, weight)])
    for path, layer in layers:
        present = [(a, float(w)) for a, w in zip(adapters, weights) if a in layer.disel_A]
        if present:
            plan.append((path, layer, present))
    if not plan:
        raise ValueError(f"adapters {list(adapters)} adapt no layer of the model")
    ranks = {path: sum(layer.r[a] for a, _ in present) for path, layer, present in plan}
    keys = {path: "^" + re.escape(path) for path in ranks}
    config = dataclasses.replace(
        tuner.peft_config[adapters[0]],
        r=max(ranks.values()),
        lora_alpha=max(ranks.values()),
        target_modules=set(ranks),
        exclude_modules=None,
        layers_to_transform=None,
        layers_pattern=None,
        rank_pattern={keys[p]: r for p, r in ranks.items()},
        alpha_pattern={keys[p]: float(r) for p, r in ranks.items()},  # scaling 1: the weights go into B
    )
    tuner.peft_config[adapter_name] = config
    tuner.inject_adapter(tuner.model, adapter_name)
    with torch.no_grad():
        for path, layer, present in plan:
            A = torch.cat([layer.disel_A[a].weight for a, _ in present])  # (R, d)
            W = torch.cat([layer.disel_gate[a].weight for a, _ in present])  # (R, d)
            b = torch.cat([layer.disel_gate[a].bias for a, _ in present])  # (R,)
            B = torch.cat([layer.disel_B[a].weight * (w * layer.scaling[a]) for a, w in present], dim=1)  # (m, R)
            layer.disel_A[adapter_name].weight.copy_(A)
            layer.disel_gate[adapter_name].weight.copy_(W)
            layer.disel_gate[adapter_name].bias.copy_(b)
            layer.disel_B[adapter_name].weight.copy_(B)
            if layer.scaling[adapter_name] != 1.0:
                raise AssertionError(f"combined adapter scaling at {path!r} is {layer.scaling[adapter_name]}, expected 1")


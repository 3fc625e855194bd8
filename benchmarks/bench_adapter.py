"""Benchmark: the cost of DISeL against LoRA on a tiny Llama (CPU), and fused vs reference update.

Run ``python benchmarks/bench_adapter.py`` (``--help`` for sizes; ``--smoke`` for a seconds-long check).

Model: a Llama built from a config (no download): hidden 512, 4 layers, 8 heads (no grouped KV),
intermediate 1376, vocabulary 32000 by default (Llama-2's; ``--vocab`` changes it: the frozen output
head is a large share of the step and dilutes every ratio, so the script also runs a small vocabulary),
batch 4 × 256 tokens, float32, ``torch.set_num_threads(2)``. Every q,k,v,o,gate,up,down projection is
adapted, at ranks 8 and 64 with ``lora_alpha = 2r`` and no dropout:

* ``lora``: ``peft.LoraConfig``;
* ``disel``: ``disel.DiselConfig`` through PEFT when the PEFT integration is importable, otherwise
  :class:`disel.DiselLinear` swapped in by hand; its update is :func:`disel.disel_update` (fused);
* ``disel_ref``: the same DISeL model with :func:`disel.disel_update_reference` patched in for the
  fused function (benchmark only).

Measured, interleaved (each repetition runs every method once, in rotating order, after warmup). Per
method: median wall time with its interquartile range, the minimum, and the median process CPU time;
ratios of each. The wall-time median is what the targets are stated for; on a machine shared with other
jobs, waiting for a core only ever adds wall time, so the ratio of minima and (with ``--threads 1``)
the CPU-time ratio are the steadier estimates:

* training step: forward + loss + backward + AdamW step (``fused=True``, the Trainer's default on CPU;
  DISeL's optimizer groups come from :func:`disel.optim.param_groups`);
* inference: one forward under ``torch.inference_mode`` in ``eval()``, with the stacked ``[A; W_g]``
  cached between calls (``disel``, the default) and re-concatenated every call (``disel_nocache``); the
  time ratios are also shown divided by the FLOP ratio (1.000: the extra time is just the extra FLOPs);
* floating-point operations of a training step and of an inference forward (``FlopCounterMode``): the
  noise-free ratio that the time ratios approach when matmuls dominate;
* adapter branch alone: forward + backward of the seven adapters of one layer on 1024 tokens
  (PEFT LoRA's ``B(A x) · s`` vs the fused and reference DISeL update).

Memory (CPU has no peak-allocation counter that separates one step from another): bytes saved for
backward, counted once per storage with ``torch.autograd.graph.saved_tensors_hooks`` and excluding
parameter and buffer storages (so it is the activation memory alive at the start of backward), plus the
persistent state: every parameter, the trainable parameters' gradients and the AdamW state. Their sum
estimates the step's peak; both it and the activations alone are reported as DISeL/LoRA ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import statistics
import sys
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

import disel
import disel.functional
from disel.layers import DiselLinear
from disel.optim import param_groups

LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MIB = 2**20


# --- models ---------------------------------------------------------------------------------------


def _disel_config_class():
    """``DiselConfig`` of the PEFT integration, or ``None`` if it is not importable."""
    cls = getattr(disel, "DiselConfig", None)
    if cls is None:
        try:
            from disel.tuner import DiselConfig as cls
        except ImportError:
            return None
    return cls


def build_base(args: argparse.Namespace) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        intermediate_size=args.intermediate,
        vocab_size=args.vocab,
        max_position_embeddings=args.seq,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def adapt(base: nn.Module, method: str, r: int) -> nn.Module:
    """A copy of ``base`` with every LLAMA_TARGETS projection adapted by ``method`` ("lora" / "disel")."""
    from peft import LoraConfig, get_peft_model

    model = copy.deepcopy(base)
    torch.manual_seed(1)
    if method == "lora":
        return get_peft_model(
            model, LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=list(LLAMA_TARGETS))
        )
    config_cls = _disel_config_class()
    if config_cls is not None:
        return get_peft_model(
            model, config_cls(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=list(LLAMA_TARGETS))
        )
    model.requires_grad_(False)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if name in LLAMA_TARGETS and isinstance(child, nn.Linear):
                setattr(module, name, DiselLinear(child, r, lora_alpha=2 * r))
    return model


def make_optimizer(model: nn.Module, method: str, lr: float = 1e-4) -> torch.optim.Optimizer:
    if method == "lora":
        groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    else:
        groups = param_groups(model, lr=lr)
    return torch.optim.AdamW(groups, lr=lr, fused=True)


@contextlib.contextmanager
def reference_update() -> Iterator[None]:
    """Route every ``disel`` module's use of the fused update to the reference (benchmark only)."""
    fused, reference = disel.functional.disel_update, disel.functional.disel_update_reference
    patched = [
        m
        for name, m in list(sys.modules.items())
        if name.startswith("disel.") and m is not None and getattr(m, "disel_update", None) is fused
    ]
    if not any(m is not disel.functional for m in patched):
        raise RuntimeError("no DISeL layer module imports disel_update; cannot switch to the reference")

    def reference_ignoring_cache(*args, cache=None, **kwargs):  # the reference has no [A; W_g] to cache
        return reference(*args, **kwargs)

    for module in patched:
        module.disel_update = reference_ignoring_cache
    try:
        yield
    finally:
        for module in patched:
            module.disel_update = fused


# --- measurement ----------------------------------------------------------------------------------


Timings = dict[str, dict[str, list[float]]]  # method → {"wall": seconds, "cpu": seconds}


def interleaved(runs: dict[str, Callable[[], None]], reps: int, warmup: int) -> Timings:
    """Wall-clock and process CPU seconds per call of each run; every repetition calls each run once, in
    rotating order."""
    names = list(runs)
    times: Timings = {name: {"wall": [], "cpu": []} for name in names}
    for rep in range(warmup + reps):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            wall, cpu = time.perf_counter(), time.process_time()
            runs[name]()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            if rep >= warmup:
                times[name]["wall"].append(wall)
                times[name]["cpu"].append(cpu)
    return times


def summary(times: dict[str, list[float]]) -> str:
    wall = times["wall"]
    q = statistics.quantiles(wall, n=4) if len(wall) > 1 else [wall[0]] * 3
    return (
        f"wall median {1e3 * q[1]:8.1f} ms (IQR {1e3 * q[0]:.1f}-{1e3 * q[2]:.1f}), min {1e3 * min(wall):8.1f} ms; "
        f"CPU median {1e3 * statistics.median(times['cpu']):8.1f} ms"
    )


def time_ratios(ratios: dict[str, str], label: str, times: Timings, num: str, den: str) -> None:
    """Store the ratio of medians of wall time (what the targets are stated for), of the wall-time minima
    and of medians of process CPU time. On a shared machine, waiting for a core only adds wall time: the
    minima and the CPU time are the less noisy estimates (with 1 thread the CPU time excludes waiting)."""
    wall_median = statistics.median(times[num]["wall"]) / statistics.median(times[den]["wall"])
    wall_min = min(times[num]["wall"]) / min(times[den]["wall"])
    cpu_median = statistics.median(times[num]["cpu"]) / statistics.median(times[den]["cpu"])
    ratios[label] = f"{wall_median:.3f}   (wall min {wall_min:.3f}, CPU median {cpu_median:.3f})"


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def memory_of_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: torch.Tensor) -> dict[str, int]:
    """Bytes: activations saved for backward (unique storages, parameters/buffers excluded) and state."""
    own = {p.untyped_storage().data_ptr() for p in model.parameters()}
    own |= {b.untyped_storage().data_ptr() for b in model.buffers()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in own:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    optimizer.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(input_ids=batch, labels=batch).loss
    loss.backward()
    optimizer.step()
    trainable = [p for p in model.parameters() if p.requires_grad]
    state = [t for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    persistent = _nbytes(model.parameters()) + _nbytes(trainable) + _nbytes(state)
    activations = sum(saved.values())
    return {
        "activations": activations,
        "persistent": persistent,
        "total": activations + persistent,
        "trainable_params": sum(p.numel() for p in trainable),
    }


def flops_of(run: Callable[[], None]) -> int:
    """Floating-point operations of one call (matmuls and attention, counted by torch's FlopCounterMode):
    the noise-free cost the time ratios would follow if every kernel ran at the same speed."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops()


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()

    return run


def inference(model: nn.Module, batch: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        with torch.inference_mode():
            model(input_ids=batch)

    return run


def without_stacked_cache(run: Callable[[], None]) -> Callable[[], None]:
    """The same run with the inference cache of ``[A; W_g]`` turned off (re-concatenated every call)."""

    def wrapped() -> None:
        with disel.functional.stacked_weight_cache_enabled(False):
            run()

    return wrapped


def with_reference(run: Callable[[], None]) -> Callable[[], None]:
    def wrapped() -> None:
        with reference_update():
            run()

    return wrapped


# --- the adapter branch alone ---------------------------------------------------------------------


def adapter_branch_runs(args: argparse.Namespace, r: int) -> dict[str, Callable[[], None]]:
    """Forward + backward of one layer's seven adapters on batch × seq tokens, per method."""
    h, i = args.hidden, args.intermediate
    shapes = [(h, h)] * 4 + [(h, i), (h, i), (i, h)]  # (d, m): q, k, v, o, gate, up, down
    gen = torch.Generator().manual_seed(0)
    cases = []
    for d, m in shapes:
        x = torch.randn(args.batch, args.seq, d, generator=gen).requires_grad_(True)
        params = [
            torch.randn(*shape, generator=gen).mul_(0.05).requires_grad_(True)
            for shape in ((r, d), (m, r), (r, d), (r,))
        ]
        grad_out = torch.randn(args.batch, args.seq, m, generator=gen)
        cases.append((x, params, grad_out))
    scaling = 2.0

    def lora(x, A, B, W, b):  # PEFT LoRA's branch: lora_B(lora_A(dropout(x))) * scaling
        return F.linear(F.linear(x, A), B) * scaling

    def fused(x, A, B, W, b):
        return disel.functional.disel_update(x, A, B, W, b, scaling)

    def reference(x, A, B, W, b):
        return disel.functional.disel_update_reference(x, A, B, W, b, scaling)

    def runner(fn):
        def run() -> None:
            for x, params, grad_out in cases:
                fn(x, *params).backward(grad_out)

        return run

    return {"lora": runner(lora), "disel": runner(fused), "disel_ref": runner(reference)}


# --- main -----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--reps", type=int, default=10, help="measured repetitions per method (median)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--intermediate", type=int, default=1376)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--skip", nargs="*", default=[], choices=["train", "inference", "memory", "branch"])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repetition (a seconds-long check)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.hidden, args.intermediate, args.layers, args.heads, args.vocab = 32, 64, 2, 4, 64
        args.batch, args.seq, args.reps, args.warmup, args.ranks = 2, 8, 1, 0, [2]
    return args


def _bench_train(models, optimizers, batch, args, ratios) -> None:
    """Time a training step (forward + backward + AdamW) of LoRA, fused DISeL and reference DISeL; add the ratios."""
    for model in models.values():
        model.train()
    runs = {
        "lora": train_step(models["lora"], optimizers["lora"], batch),
        "disel": train_step(models["disel"], optimizers["disel"], batch),
    }
    runs["disel_ref"] = with_reference(runs["disel"])
    flops = {name: flops_of(run) for name, run in runs.items()}
    print("train step   GFLOP " + ", ".join(f"{name} {f / 1e9:.1f}" for name, f in flops.items()))
    ratios["train FLOP DISeL/LoRA"] = f"{flops['disel'] / flops['lora']:.3f}"
    times = interleaved(runs, args.reps, args.warmup)
    for name, seconds in times.items():
        print(f"train step   {name:9s} {summary(seconds)}")
    time_ratios(ratios, "train DISeL/LoRA", times, "disel", "lora")
    time_ratios(ratios, "train DISeL-ref/LoRA", times, "disel_ref", "lora")
    time_ratios(ratios, "train fused/ref", times, "disel", "disel_ref")


def _bench_inference(models, batch, args, ratios) -> None:
    """Time an inference forward of LoRA, DISeL (cached stacked weight), DISeL without the cache and the reference."""
    for model in models.values():
        model.eval()
    runs = {"lora": inference(models["lora"], batch), "disel": inference(models["disel"], batch)}
    runs["disel_ref"] = with_reference(runs["disel"])
    runs["disel_nocache"] = without_stacked_cache(runs["disel"])
    flops = {name: flops_of(run) for name, run in runs.items()}
    flop_ratio = flops["disel"] / flops["lora"]
    ratios["inference FLOP DISeL/LoRA"] = f"{flop_ratio:.3f}"
    times = interleaved(runs, args.reps, args.warmup)
    for name, seconds in times.items():
        print(f"inference    {name:13s} {summary(seconds)}")
    time_ratios(ratios, "inference DISeL/LoRA", times, "disel", "lora")
    time_ratios(ratios, "inference DISeL-nocache/LoRA", times, "disel_nocache", "lora")
    time_ratios(ratios, "inference fused/ref", times, "disel", "disel_ref")
    # How far the time ratio is above the FLOP ratio (1.000 = the extra time is exactly the extra FLOPs).
    for name in ("disel", "disel_nocache"):
        excess = statistics.median(times[name]["wall"]) / statistics.median(times["lora"]["wall"]) / flop_ratio
        excess_min = min(times[name]["wall"]) / min(times["lora"]["wall"]) / flop_ratio
        ratios[f"inference {name}/LoRA ÷ FLOP ratio"] = f"{excess:.3f}   (wall min {excess_min:.3f})"


def _bench_memory(models, optimizers, batch, ratios) -> None:
    """Bytes saved for backward plus parameters, gradients and AdamW state, per method; add the ratios."""
    memory = {}
    for method in ("lora", "disel"):
        models[method].train()
        memory[method] = memory_of_step(models[method], optimizers[method], batch)
    with reference_update():
        memory["disel_ref"] = memory_of_step(models["disel"], optimizers["disel"], batch)
    for name, m in memory.items():
        print(
            f"memory       {name:9s} activations {m['activations'] / MIB:8.1f} MiB + params/grads/AdamW "
            f"{m['persistent'] / MIB:7.1f} MiB = {m['total'] / MIB:8.1f} MiB "
            f"({m['trainable_params'] / 1e6:.2f} M trainable)"
        )
    for label, num, key in (
        ("memory total DISeL/LoRA", "disel", "total"),
        ("memory activations DISeL/LoRA", "disel", "activations"),
        ("memory total DISeL-ref/LoRA", "disel_ref", "total"),
    ):
        ratios[label] = f"{memory[num][key] / memory['lora'][key]:.3f}"


def _bench_branch(args, r, ratios) -> None:
    """Time the adapter branch alone (forward + backward), DISeL against LoRA and fused against reference."""
    times = interleaved(adapter_branch_runs(args, r), args.reps * 3, args.warmup)
    for name, seconds in times.items():
        print(f"branch fwd+bwd {name:9s} {summary(seconds)}")
    time_ratios(ratios, "branch DISeL/LoRA", times, "disel", "lora")
    time_ratios(ratios, "branch fused/ref", times, "disel", "disel_ref")


def main(argv: list[str] | None = None) -> dict[int, dict[str, str]]:
    """Run the benchmark and print it; returns {rank: {ratio name: printed value}}."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    via = "PEFT DiselConfig" if _disel_config_class() else "DiselLinear swapped in (PEFT integration not found)"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; DISeL via {via}")
    print(
        f"tiny Llama: hidden {args.hidden}, {args.layers} layers, intermediate {args.intermediate}, "
        f"vocab {args.vocab}, batch {args.batch} x {args.seq} tokens; {args.reps} interleaved repetitions "
        f"after {args.warmup} warmup"
    )
    base = build_base(args)
    batch = torch.randint(0, args.vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
    results: dict[int, dict[str, str]] = {}
    for r in args.ranks:
        print(f"\n== rank {r} (lora_alpha {2 * r}) ==")
        ratios: dict[str, str] = {}
        models = {method: adapt(base, method, r) for method in ("lora", "disel")}
        optimizers = {method: make_optimizer(model, method) for method, model in models.items()}
        with torch.no_grad():  # same loss from the fused and the reference update: a sanity check
            loss_fused = models["disel"](input_ids=batch, labels=batch).loss
            with reference_update():
                loss_ref = models["disel"](input_ids=batch, labels=batch).loss
        assert torch.allclose(loss_fused, loss_ref, rtol=1e-5), (loss_fused, loss_ref)

        if "train" not in args.skip:
            _bench_train(models, optimizers, batch, args, ratios)

        if "inference" not in args.skip:
            _bench_inference(models, batch, args, ratios)

        if "memory" not in args.skip:
            _bench_memory(models, optimizers, batch, ratios)

        del models, optimizers
        gc.collect()

        if "branch" not in args.skip:
            _bench_branch(args, r, ratios)

        print(f"-- rank {r} ratios (wall-time medians; in parentheses: wall-time minima, CPU-time medians):")
        for name, value in ratios.items():
            print(f"   {name:32s} {value}")
        results[r] = ratios
    return results


if __name__ == "__main__":
    main()

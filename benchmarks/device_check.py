"""Device check of DISeL's fused update: bf16-autocast gradients against the reference, and DISeL vs LoRA speed.

1. **Gradients.** Under ``torch.autocast(bfloat16)``, the fused :func:`disel.disel_update` (custom
   backward) and the literal :func:`disel.disel_update_reference` (autograd) are run forward and
   backward on the same inputs; each one's gradients (x, A, B, W_g, b_g) are compared with the
   reference computed in float32 without autocast. Pass: the fused error is within bf16 tolerance
   (relative Frobenius error ≤ ``--tolerance``) and not much worse than the reference's own bf16 error.
2. **Speed.** Forward + backward of one adapted layer at a 7B model's MLP shapes (4096 → 11008 and
   11008 → 4096; batch × sequence 8 × 512 tokens; r = 16 and 64): the adapter branch alone, and the
   whole layer (frozen ``W0`` + branch), for LoRA, fused DISeL and reference DISeL. Prints median times
   and the ratios side by side.

On a CUDA machine it runs those shapes in bf16 autocast (well under 10 minutes on one GPU). Without
CUDA (``--small``, chosen automatically) it runs small shapes in float32 for timing, bf16 autocast for
the gradient check, in seconds: what CI runs.

    python benchmarks/device_check.py            # or scripts/device_check.sh
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from disel.functional import disel_update, disel_update_reference

FULL_SHAPES = ((4096, 11008), (11008, 4096))  # (d_in, d_out) of a 7B Llama's MLP projections
SMALL_SHAPES = ((128, 344), (344, 128))
SCALING = 2.0  # lora_alpha = 2r


@dataclass
class Case:
    """Inputs of one layer: x (batch, seq, d) and adapter parameters A (r, d), B (m, r), W_g (r, d), b_g (r,)."""

    x: torch.Tensor
    A: torch.Tensor
    B: torch.Tensor
    W: torch.Tensor
    b: torch.Tensor
    W0: torch.Tensor  # (m, d) frozen base weight
    grad_out: torch.Tensor  # (batch, seq, m)

    def params(self) -> list[torch.Tensor]:
        return [self.x, self.A, self.B, self.W, self.b]

    def zero_grad(self) -> None:
        for t in self.params():
            t.grad = None


def make_case(d: int, m: int, r: int, batch: int, seq: int, device: torch.device, base_dtype: torch.dtype) -> Case:
    gen = torch.Generator(device=device).manual_seed(0)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, device=device) * scale).requires_grad_(True)

    return Case(
        x=randn(batch, seq, d),
        A=randn(r, d, scale=d**-0.5),
        B=randn(m, r, scale=r**-0.5),
        W=randn(r, d, scale=d**-0.5),
        b=torch.full((r,), -1.0, device=device).requires_grad_(True),  # gates spread around σ(-1) ≈ 0.27
        W0=(torch.randn(m, d, generator=gen, device=device) * d**-0.5).to(base_dtype),
        grad_out=torch.randn(batch, seq, m, generator=gen, device=device),
    )


def _gradients(case: Case, update: Callable, autocast: bool) -> list[torch.Tensor]:
    case.zero_grad()
    with torch.autocast(case.x.device.type, dtype=torch.bfloat16, enabled=autocast):
        out = update(case.x, case.A, case.B, case.W, case.b, SCALING)
    out.float().backward(case.grad_out)
    grads = [t.grad.detach().float().clone() for t in case.params()]
    case.zero_grad()
    return grads


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


NAMES = ("x", "A", "B", "W_g", "b_g")


def check_gradients(
    case: Case, tolerance: float, update: Callable = disel_update
) -> tuple[bool, dict[str, tuple[float, float]]]:
    """{name: (fused error, reference-bf16 error)} relative to the float32 reference, and whether it passes.

    ``update``: the implementation under test (the fused :func:`disel.disel_update`).
    """
    truth = _gradients(case, disel_update_reference, autocast=False)
    fused = _gradients(case, update, autocast=True)
    ref_bf16 = _gradients(case, disel_update_reference, autocast=True)
    errors = {
        name: (_relative_error(f, t), _relative_error(r, t)) for name, f, r, t in zip(NAMES, fused, ref_bf16, truth)
    }
    ok = all(f <= tolerance and f <= 2 * r + 1e-3 for f, r in errors.values())
    return ok, errors


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(run: Callable[[], None], device: torch.device, reps: int, warmup: int) -> float:
    """Median wall milliseconds of ``run`` after ``warmup`` calls (synchronised on CUDA)."""
    for _ in range(warmup):
        run()
    _synchronize(device)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        run()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def speed_runs(case: Case, autocast: bool) -> dict[str, Callable[[], None]]:
    """Forward + backward closures: ``{method}/{branch|layer}`` for LoRA, fused DISeL and reference DISeL."""

    def lora(x, A, B, W, b, s):  # PEFT LoRA's branch: lora_B(lora_A(x)) * scaling
        return F.linear(F.linear(x, A), B) * s

    updates = {"lora": lora, "disel": disel_update, "disel_ref": disel_update_reference}
    params = [case.x, case.A, case.B, case.W, case.b]

    def runner(update, with_base):
        def run() -> None:
            with torch.autocast(case.x.device.type, dtype=torch.bfloat16, enabled=autocast):
                out = update(case.x, case.A, case.B, case.W, case.b, SCALING)
                if with_base:
                    out = F.linear(case.x, case.W0) + out
            out.backward(case.grad_out)
            for t in params:
                t.grad = None

        return run

    runs = {}
    for name, update in updates.items():
        runs[f"{name}/branch"] = runner(update, False)
        runs[f"{name}/layer"] = runner(update, True)
    return runs


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="small shapes (default when CUDA is unavailable)")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--ranks", type=int, nargs="+", default=None, help="default 16 64 (small: 4 16)")
    parser.add_argument("--batch", type=int, default=None, help="default 8 (small: 2)")
    parser.add_argument("--seq", type=int, default=None, help="default 512 (small: 32)")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--tolerance", type=float, default=2e-2, help="relative gradient error allowed in bf16")
    args = parser.parse_args(argv)
    args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.device.type != "cuda":
        args.small = True
    args.shapes = SMALL_SHAPES if args.small else FULL_SHAPES
    args.ranks = args.ranks or ([4, 16] if args.small else [16, 64])
    args.batch = args.batch or (2 if args.small else 8)
    args.seq = args.seq or (32 if args.small else 512)
    return args


def main(argv: list[str] | None = None) -> dict[str, object]:
    """Run both checks and print them; returns ``{"gradients_ok": bool, "ratios": {case: {name: ratio}}}``."""
    args = parse_args(argv)
    device = args.device
    autocast = device.type == "cuda"  # timing precision: bf16 on GPUs, float32 on CPUs
    base_dtype = torch.bfloat16 if autocast else torch.float32
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(
        f"torch {torch.__version__} on {name}; {'small' if args.small else '7B'} shapes {args.shapes}, "
        f"ranks {args.ranks}, {args.batch} x {args.seq} tokens; timing in {'bf16 autocast' if autocast else 'float32'}"
    )
    all_ok = True
    ratios: dict[str, dict[str, float]] = {}
    for d, m in args.shapes:
        for r in args.ranks:
            label = f"{d}->{m} r={r}"
            case = make_case(d, m, r, args.batch, args.seq, device, base_dtype)
            ok, errors = check_gradients(case, args.tolerance)
            all_ok &= ok
            print(
                f"\n== {label}: bf16-autocast gradients {'OK' if ok else 'FAIL'} "
                "(relative error vs float32 reference: fused / reference-in-bf16)"
            )
            print("   " + "   ".join(f"{n} {f:.2e}/{rf:.2e}" for n, (f, rf) in errors.items()))
            times = {
                key: time_ms(run, device, args.reps, args.warmup) for key, run in speed_runs(case, autocast).items()
            }
            ratios[label] = {
                "branch DISeL/LoRA": times["disel/branch"] / times["lora/branch"],
                "layer DISeL/LoRA": times["disel/layer"] / times["lora/layer"],
                "branch fused/ref": times["disel/branch"] / times["disel_ref/branch"],
                "layer DISeL-ref/LoRA": times["disel_ref/layer"] / times["lora/layer"],
            }
            print("   fwd+bwd ms   " + "  ".join(f"{key} {ms:.3f}" for key, ms in times.items()))
            print("   ratios       " + "  ".join(f"{key} {v:.3f}" for key, v in ratios[label].items()))
            del case
    print("\nsummary (rows: shape and rank; columns: ratios of median fwd+bwd times)")
    keys = list(next(iter(ratios.values())))
    print(f"{'':22s}" + "".join(f"{k:>22s}" for k in keys))
    for label, row in ratios.items():
        print(f"{label:22s}" + "".join(f"{row[k]:22.3f}" for k in keys))
    print(f"\ngradient check: {'PASS' if all_ok else 'FAIL'}")
    return {"gradients_ok": all_ok, "ratios": ratios}


if __name__ == "__main__":
    sys.exit(0 if main()["gradients_ok"] else 1)

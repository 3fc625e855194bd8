"""benchmarks/device_check.py runs on a CPU at small shapes in seconds, and its gradient check can fail."""

import importlib.util
from pathlib import Path

import torch

from disel.functional import disel_update


def _module():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "device_check.py"
    spec = importlib.util.spec_from_file_location("device_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_device_check_small_shapes_on_cpu(monkeypatch):
    """Without --small on a machine without CUDA, small shapes are chosen; every gradient is within bf16
    tolerance of the float32 reference and every ratio is the quotient of the two timings it names."""
    module = _module()
    milliseconds = {"lora/branch": 2.0, "lora/layer": 5.0, "disel/branch": 3.0, "disel/layer": 7.0}
    milliseconds |= {"disel_ref/branch": 11.0, "disel_ref/layer": 13.0}
    speed_runs = module.speed_runs

    def named_runs(case, autocast):  # each run carries its name, so that the stand-in clock can answer for it
        runs = speed_runs(case, autocast)
        for name, run in runs.items():
            run.name = name
        return runs

    def clock(run, device, reps, warmup):  # every run still runs once; its time is the one named above
        run()
        return milliseconds[run.name]

    monkeypatch.setattr(module, "speed_runs", named_runs)
    monkeypatch.setattr(module, "time_ms", clock)
    result = module.main(["--device", "cpu", "--reps", "1", "--warmup", "0", "--ranks", "4"])
    assert result["gradients_ok"] is True
    expected = {"branch DISeL/LoRA": 3 / 2, "layer DISeL/LoRA": 7 / 5, "branch fused/ref": 3 / 11}
    expected["layer DISeL-ref/LoRA"] = 13 / 5
    assert result["ratios"] == {"128->344 r=4": expected, "344->128 r=4": expected}


def test_gradient_check_catches_a_wrong_backward():
    """An update whose gradient w.r.t. the gate bias is off by 10% is flagged (the check is not vacuous)."""
    module = _module()

    class WrongBias(torch.autograd.Function):
        @staticmethod
        def forward(ctx, b):
            return b.clone()

        @staticmethod
        def backward(ctx, grad):
            return 1.1 * grad

    def wrong(x, A, B, W, b, s):
        return disel_update(x, A, B, W, WrongBias.apply(b), s)

    case = module.make_case(32, 48, 4, 2, 8, torch.device("cpu"), torch.float32)
    ok, errors = module.check_gradients(case, 2e-2, update=wrong)
    assert ok is False and errors["b_g"][0] > 0.05
    ok, _ = module.check_gradients(case, 2e-2)
    assert ok is True


def test_speed_runs_work_under_bf16_autocast():
    """The GPU timing path (bf16 autocast, bf16 base weight, float32 upstream gradient) runs on a CPU too,
    and every run leaves the parameters' gradients cleared."""
    module = _module()
    case = module.make_case(32, 48, 4, 2, 8, torch.device("cpu"), torch.bfloat16)
    runs = module.speed_runs(case, autocast=True)
    assert set(runs) == {f"{m}/{p}" for m in ("lora", "disel", "disel_ref") for p in ("branch", "layer")}
    for run in runs.values():
        run()
        assert all(t.grad is None for t in case.params())

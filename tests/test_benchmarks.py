"""Smoke test: the benchmark script runs end to end (at tiny sizes) and prints its ratios."""

import importlib.util
from pathlib import Path


def test_bench_adapter_smoke():
    """benchmarks/bench_adapter.py --smoke measures every method and reports the DISeL/LoRA memory ratio."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_adapter.py"
    spec = importlib.util.spec_from_file_location("bench_adapter", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ratios = module.main(["--smoke", "--threads", "1"])
    assert ratios, "no rank was measured"
    for rank_ratios in ratios.values():
        assert "memory total DISeL/LoRA" in rank_ratios

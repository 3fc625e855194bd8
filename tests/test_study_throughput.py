"""FLOP formula of a training step and the matmul throughput probe (disel.experiments.study.throughput)."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import disel
from disel.experiments.study.throughput import (
    measure_matmul_throughput,
    tokens_per_second_bound,
    training_step_flops,
)
from tiny_models import tiny_llama

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _tiny_llama():
    # eager attention: matmuls FlopCounterMode counts; train mode, as the original
    return tiny_llama(0, vocab_size=50, max_position_embeddings=64, pad_token_id=0, attn_implementation="eager").train()


def _adapted(kind):
    from peft import LoraConfig, get_peft_model

    model = _tiny_llama()
    if kind == "full":
        return model.train()
    config = (
        LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS)
        if kind == "lora"
        else disel.DiselConfig(r=4, lora_alpha=8, target_modules=TARGETS)
    )
    return get_peft_model(model, config).train()


def _counted_step_flops(model, batch, seq):
    ids = torch.randint(1, 50, (batch, seq), generator=torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids, labels=ids).loss.backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("kind", ["lora", "disel", "full"])
def test_step_flops_formula_matches_counted_matmuls(kind):
    """4·N·T (frozen) + 6·n·T (trainable) + 12·B·S²·H·h (attention), with the input-gradient products
    skipped where no gradient flows, equals torch's count of a forward + backward (to the rotary
    embedding's tiny position matmul)."""
    model = _adapted(kind)
    batch, seq = 2, 8
    formula = training_step_flops(model, batch, seq)
    counted = _counted_step_flops(model, batch, seq)
    assert formula.total == pytest.approx(counted, rel=2e-3)
    if kind != "full":
        assert formula.adapter_params == sum(p.numel() for p in model.parameters() if p.requires_grad) - (
            # DISeL's gate bias is a parameter but costs no matmul
            sum(
                m.disel_gate["default"].bias.numel()
                for m in model.modules()
                if isinstance(m, disel.tuner.layer.DiselLayer)
            )
        )
        # q, o: 32·32; k, v: 32·16 (2 KV heads of 8); gate, up, down: 32·64; per layer, plus the LM head 32·50
        assert formula.frozen_params == 2 * (2 * 32 * 32 + 2 * 32 * 16 + 3 * 32 * 64) + 32 * 50


def test_disel_costs_more_adapter_flops_than_lora_by_the_gate_projection():
    """DISeL's adapter adds W_g (r × d) to LoRA's A, B: n_DISeL - n_LoRA = r · Σ d over adapted layers."""
    lora, dis = training_step_flops(_adapted("lora"), 1, 4), training_step_flops(_adapted("disel"), 1, 4)
    sum_d = 2 * (4 * 32 + 2 * 32 + 64)  # per layer: q, k, v, o, gate, up read 32 features; down reads 64
    assert dis.adapter_params - lora.adapter_params == 4 * sum_d
    assert dis.frozen == lora.frozen


def test_matmul_throughput_divides_the_flops_by_the_timed_seconds_and_bounds_tokens_per_second(monkeypatch):
    """With a stand-in clock on which each timed product takes a known time (and twice that in CPU time), the best,
    median and CPU GFLOP/s are 2·tokens·d_in·d_out over the shortest, median and median CPU seconds; the token
    bound is GFLOP/s over FLOPs per token."""
    from disel.experiments.study import throughput

    clock = {"wall": 0.0, "cpu": 0.0}
    durations = iter([1.0, 0.004, 0.002, 0.003])  # the warm-up, then three timed products

    def timed_mm(*args, **kwargs):
        seconds = next(durations)
        clock["wall"] += seconds
        clock["cpu"] += 2 * seconds

    monkeypatch.setattr(throughput.torch, "mm", timed_mm)
    monkeypatch.setattr(throughput.time, "perf_counter", lambda: clock["wall"])
    monkeypatch.setattr(throughput.time, "process_time", lambda: clock["cpu"])
    result = measure_matmul_throughput((64, 32, 16), seconds=0.0, min_repetitions=3)
    monkeypatch.undo()
    flops = 2.0 * 64 * 32 * 16
    assert result.repetitions == 3
    assert result.best_gflops == pytest.approx(flops / 0.002 / 1e9)
    assert result.median_gflops == pytest.approx(flops / 0.003 / 1e9)
    assert result.cpu_gflops == pytest.approx(flops / 0.006 / 1e9)
    assert result.threads == torch.get_num_threads()
    flops = training_step_flops(_adapted("lora"), 1, 4)
    assert tokens_per_second_bound(flops, 10.0) == pytest.approx(10e9 * flops.tokens / flops.total)

"""Training tokens/s of each arm against this machine's measured matmul FLOP limit (:mod:`.throughput`).

Tokens per step = batch × the mean padded length of the training batches (the collator pads to the longest
sequence of each batch; ``padding_fraction`` says how much of that is padding). Tokens/s = steps × tokens
per step / the Trainer's ``train_runtime``. The FLOP limit = measured single-thread matmul GFLOP/s (process CPU
time) / the step's matmul FLOPs per token (:func:`~.throughput.training_step_flops` on the trained adapter).
"""

from __future__ import annotations

import random
from dataclasses import asdict

import torch

from ..schemas import TrainResult
from .config import RunSpec
from .records import ArmThroughput, Throughput
from .throughput import measure_matmul_throughput, tokens_per_second_bound, training_step_flops

__all__ = ["measure_training_throughput", "padded_lengths"]


def padded_lengths(lengths: list[int], batch_size: int, seed: int = 0) -> tuple[float, float]:
    """(mean padded batch length, padding fraction) for random batches of ``batch_size`` sequences."""
    order = list(lengths)
    random.Random(seed).shuffle(order)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    padded = sum(max(b) * len(b) for b in batches)
    return padded / len(order), 1.0 - sum(order) / padded


def _trainable(model_path: str, spec: RunSpec) -> torch.nn.Module:
    import peft

    import disel  # noqa: F401  (registers the DISeL PEFT type)

    from ..models import is_adapter_dir, load_model

    if not is_adapter_dir(spec.run_dir):  # full fine-tuning: every weight trains
        return load_model(spec.run_dir, dtype=spec.config.model.dtype).requires_grad_(True)
    base = load_model(model_path, dtype=spec.config.model.dtype)
    return peft.PeftModel.from_pretrained(base, spec.run_dir, is_trainable=True)


def measure_training_throughput(specs: list[RunSpec], model_path: str) -> Throughput:
    """The matmul throughput and, per trained arm (its first run), tokens/s against the FLOP limit."""
    from ..data.datasets import prepare_data
    from ..models import is_adapter_dir, load_tokenizer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' setting: one core per training run
    try:
        matmul = measure_matmul_throughput()
    finally:
        torch.set_num_threads(threads)
    tokenizer = load_tokenizer(model_path)
    arms: dict[str, ArmThroughput] = {}
    for spec in specs:
        if spec.arm in arms or spec.arm_config.from_arm is not None:  # a post-hoc arm does not train
            continue
        if not (is_adapter_dir(spec.run_dir) or (spec.run_dir / "config.json").is_file()):
            continue  # its records only (committed from an earlier session, weights not kept): nothing to measure
        batch = spec.config.training.per_device_train_batch_size
        train_data = prepare_data(spec.config.data, tokenizer, "causal_lm").train  # tokenised as training does
        seq_len, padding = padded_lengths([len(example["input_ids"]) for example in train_data], batch)
        flops = training_step_flops(_trainable(model_path, spec), batch, max(1, round(seq_len)))
        train = TrainResult.read(spec.run_dir)
        runtime = train.trainer_runtime_s
        tokens_per_s = train.global_step * batch * seq_len / runtime if runtime else None
        bound = tokens_per_second_bound(flops, matmul.cpu_gflops)
        arms[spec.arm] = ArmThroughput(
            tokens_per_s=tokens_per_s,
            flop_limit_tokens_per_s=bound,
            fraction_of_flop_limit=None if tokens_per_s is None else tokens_per_s / bound,
            mean_padded_length=seq_len,
            padding_fraction=padding,
            step_flops=flops.to_dict(),
            run=spec.label,
        )
    return Throughput(matmul=asdict(matmul), arms=arms)

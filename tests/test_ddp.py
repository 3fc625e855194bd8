"""Data-parallel training really runs: two CPU processes (gloo) launched with ``torchrun`` on the command line.

Claim: with the same global batch (2 processes × 2 sequences vs 1 process × 4), DDP training gives the same
trajectory as one process (the Trainer shards each global batch across ranks and averages gradients over
all response tokens), and the replicas end bit-identical (DDP keeps them in sync)."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from disel.experiments.config import load_config
from disel.experiments.train.run import RESULT_FILE, train
from disel.io import write_yaml_atomic


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_with_same_global_batch(tmp_path, tiny_llama_dir):
    model_dir = tiny_llama_dir
    rng = random.Random(0)
    data = tmp_path / "math.jsonl"
    with data.open("w") as stream:
        for _ in range(32):
            a, b = rng.randint(1, 50), rng.randint(1, 50)
            stream.write(json.dumps({"instruction": f"What is {a} + {b}?", "output": f"The answer is: {a + b}"}) + "\n")
    recipe = {
        "model": {"path": str(model_dir)},
        "data": {"train_files": [str(data)], "template": "alpaca", "max_length": 64},
        # Dropout off: each rank would draw its own masks, so the comparison would only hold in distribution.
        "method": {"name": "disel", "r": 4, "target_modules": ["q_proj", "v_proj", "down_proj"], "lora_dropout": 0.0},
        "training": {
            "output_dir": str(tmp_path / "ddp"),
            "max_steps": 4,
            "per_device_train_batch_size": 2,
            "learning_rate": 1.0e-2,
            "logging_steps": 1,
            "save_strategy": "no",
            "use_cpu": True,
            "disable_tqdm": True,
        },
    }
    recipe_path = tmp_path / "recipe.yaml"
    write_yaml_atomic(recipe_path, recipe)

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        "-m",
        "disel.experiments",
        "--config",
        str(recipe_path),
    ]
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-4000:]
    ddp = json.loads((tmp_path / "ddp" / RESULT_FILE).read_text())

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = train(
            load_config(
                recipe_path, [f"training.output_dir={tmp_path / 'single'}", "training.per_device_train_batch_size=4"]
            )
        )
    finally:
        torch.set_num_threads(threads)

    assert ddp["world_size"] == 2 and single.world_size == 1
    hashes = ddp["parameter_sha256_per_rank"]
    assert len(hashes) == 2 and hashes[0] == hashes[1]  # both ranks ran and their replicas are identical
    assert [step for step, _ in ddp["loss_history"]] == [1, 2, 3, 4]
    for (_, ddp_loss), (_, one_loss) in zip(ddp["loss_history"], single.loss_history):
        assert ddp_loss == pytest.approx(one_loss, abs=1e-5)
    ddp_adapter = load_file(str(tmp_path / "ddp" / "adapter_model.safetensors"))
    one_adapter = load_file(str(tmp_path / "single" / "adapter_model.safetensors"))
    assert ddp_adapter.keys() == one_adapter.keys()
    moved = 0.0
    for name, tensor in one_adapter.items():
        torch.testing.assert_close(ddp_adapter[name], tensor, rtol=1e-4, atol=1e-5)
        if "disel_B" in name:
            moved += float(tensor.abs().sum())
    assert moved > 0  # the comparison is between trained adapters, not two copies of the initialisation

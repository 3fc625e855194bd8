"""Sharded training really runs: torch's FSDP2 (``fully_shard``, gloo) on two CPU processes.

Claim: a tiny DISeL Llama with every decoder layer (and then the whole model) sharded over two processes,
trained with the optimizer from :func:`disel.param_groups` on the same global batch, gives the same losses and
the same final adapter as one unsharded process (FSDP2 averages the gradients of the ranks' halves, which for
equal-length sequences is the one-process gradient), to float32 round-off."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tiny_models import make_tiny_causal_lm

WORKER = Path(__file__).with_name("fsdp2_train.py")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _run(arguments: list[str], out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(WORKER.parent.parent), env.get("PYTHONPATH", "")])
    finished = subprocess.run([sys.executable, *arguments], env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-4000:]
    return torch.load(out)


@pytest.mark.slow
def test_fsdp2_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    model_dir = make_tiny_causal_lm(tmp_path / "llama")
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    sharded = _run(
        [*launcher, "--master_port", str(_free_port()), str(WORKER), str(model_dir), str(tmp_path / "two.pt")],
        tmp_path / "two.pt",
    )
    single = _run([str(WORKER), str(model_dir), str(tmp_path / "one.pt")], tmp_path / "one.pt")

    assert sharded["world_size"] == 2 and single["world_size"] == 1
    assert sharded["sharded"] == sharded["parameters"] > 0  # every parameter is a DTensor shard under FSDP2
    assert single["sharded"] == 0
    assert len(sharded["losses"]) == len(single["losses"]) == 4
    torch.testing.assert_close(torch.tensor(sharded["losses"]), torch.tensor(single["losses"]), rtol=0, atol=1e-5)
    assert sharded["adapter"].keys() == single["adapter"].keys() and len(single["adapter"]) > 0
    moved = 0.0
    for name, tensor in single["adapter"].items():
        torch.testing.assert_close(sharded["adapter"][name], tensor, rtol=1e-4, atol=1e-5)
        moved = max(moved, float((tensor - single["initial"][name]).abs().max()))
    assert moved > 1e-3  # the two runs agree on a trained adapter, not on its initialisation

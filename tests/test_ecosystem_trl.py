"""TRL's SFTTrainer with ``disel.DiselOptimizerMixin``: the gate group (own learning rate, no weight decay)
is built from the PEFT model TRL wraps itself; the plain SFTTrainer trains the gates without it and warns once.

Runs in a subprocess: the gate-group warning is once per process, and TRL's import is heavy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("trl")

_SCRIPT = textwrap.dedent(
    """
    import json, sys, warnings
    import torch
    torch.set_num_threads(1)
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer
    import disel
    from disel.optim import DiselGateGroupWarning, gate_parameters

    model_dir, out_dir = sys.argv[1:3]

    class DiselSFTTrainer(disel.DiselOptimizerMixin, SFTTrainer):
        pass

    texts = ["The quick brown fox jumps over the lazy dog.", "def add(a, b):\\n    return a + b\\n",
             "What is 3 + 4? 3 + 4 = 7. The answer is: 7", "A cat sat on the mat."]
    data = Dataset.from_dict({"text": texts * 2})

    def run(trainer_cls, name):
        args = SFTConfig(
            output_dir=f"{out_dir}/{name}", max_steps=2, per_device_train_batch_size=2, learning_rate=1e-3,
            weight_decay=0.1, lr_scheduler_type="constant", report_to=[], use_cpu=True, max_length=32,
            save_strategy="no", logging_strategy="no", seed=0,
        )
        trainer = trainer_cls(
            model=AutoModelForCausalLM.from_pretrained(model_dir), args=args, train_dataset=data,
            processing_class=AutoTokenizer.from_pretrained(model_dir),
            peft_config=disel.DiselConfig(r=4, target_modules=["q_proj", "v_proj"], gate_lr_ratio=5.0),
        )
        gates = {id(p) for p in gate_parameters(trainer.model)}
        before = {id(p): p.detach().clone() for p in gate_parameters(trainer.model)}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.train()
        groups = [
            {"n_gate": sum(id(p) in gates for p in g["params"]), "n": len(g["params"]), "lr": g["lr"],
             "weight_decay": g["weight_decay"]}
            for g in trainer.optimizer.param_groups
        ]
        moved = sum(not torch.equal(p, before[id(p)]) for p in gate_parameters(trainer.model))
        warned = [str(w.message) for w in caught if issubclass(w.category, DiselGateGroupWarning)]
        return {"groups": groups, "n_gates": len(gates), "gates_moved": moved, "warnings": warned}

    report = {"mixin": run(DiselSFTTrainer, "mixin"), "plain": run(SFTTrainer, "plain")}
    json.dump(report, open(f"{out_dir}/report.json", "w"))
    """
)


def test_sft_trainer_with_the_mixin_builds_the_gate_group(tmp_path, tiny_llama_dir):
    model_dir = tiny_llama_dir
    script = tmp_path / "sft.py"
    script.write_text(_SCRIPT)
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        OMP_NUM_THREADS="1",
        WANDB_DISABLED="true",
    )
    completed = subprocess.run(
        [sys.executable, str(script), str(model_dir), str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    report = json.loads((tmp_path / "report.json").read_text())

    mixin = report["mixin"]
    assert mixin["n_gates"] > 0 and mixin["gates_moved"] == mixin["n_gates"]
    gate_groups = [g for g in mixin["groups"] if g["n_gate"]]
    assert len(gate_groups) == 1
    (gate_group,) = gate_groups
    assert gate_group["n_gate"] == gate_group["n"] == mixin["n_gates"]  # all the gates, nothing else
    assert gate_group["weight_decay"] == 0.0
    assert gate_group["lr"] == pytest.approx(5.0 * 1e-3)
    decay = [g for g in mixin["groups"] if g["weight_decay"] > 0]
    assert decay and all(g["lr"] == pytest.approx(1e-3) and g["weight_decay"] == pytest.approx(0.1) for g in decay)
    assert mixin["warnings"] == []

    plain = report["plain"]
    assert plain["n_gates"] > 0
    assert any(g["n_gate"] and g["n"] > g["n_gate"] for g in plain["groups"])  # gates mixed with A, B
    assert len(plain["warnings"]) == 1 and "DiselOptimizerMixin" in plain["warnings"][0]

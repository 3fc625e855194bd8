"""Measure the continual study's unit costs on this CPU, single-threaded: one training step of SmolLM2-135M on a
batch of each task's prompts (LoRA, DISeL, OSF) and label scoring per test example. Writes JSON.

Times are process CPU seconds with one thread (``time.process_time``): worker time, which other jobs sharing the
cores inflate far less than wall-clock time.

    nice -n 10 python recipes/continual/measure_cost.py --data-dir ../shared/data/continual --out cost.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _adapted(base, method: str):
    import copy

    from peft import LoraConfig, get_peft_model

    import disel
    from disel.experiments.train.continual_baselines import start_osf_task

    model = copy.deepcopy(base)
    if method == "lora":
        return get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, lora_dropout=0.0))
    if method == "disel":
        return get_peft_model(model, disel.DiselConfig(r=8, lora_alpha=16, target_modules=TARGETS, lora_dropout=0.0))
    return start_osf_task(model, 1, 4, TARGETS)  # a middle task: a quarter of the rank preserved


def _step_seconds(model, batch, steps: int) -> float:
    import disel

    optimizer = torch.optim.AdamW(disel.param_groups(model, lr=1e-4, gate_lr_ratio=5.0))  # DISeL's gate group
    model.train()
    times = []
    for _ in range(steps + 1):  # the first step warms up (allocations, optimizer state)
        start = time.process_time()
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.process_time() - start)
    return sum(times[1:]) / steps


RECIPE = Path(__file__).with_name("smollm2_continual.yaml")


def recipe_grid_sizes(recipe: Path = RECIPE) -> dict[str, int]:
    """Candidate learning rates per selected method, from the recipe (its ``full`` grid is OSF's)."""
    import yaml

    grids = yaml.safe_load(recipe.read_text())["continual"]["learning_rates"]["grids"]
    return {("osf" if method == "full" else method): len(rates) for method, rates in grids.items()}


def recipe_arms(recipe: Path = RECIPE) -> dict[str, dict[str, str]]:
    """The recipe's arms by kind (``sequential_arms``: one phase per task; ``multitask_arms``: one phase), each
    arm → the method whose step it costs (``osf`` for the OSF arm)."""
    import yaml

    arms = {"sequential_arms": {}, "multitask_arms": {}}
    for name, arm in yaml.safe_load(recipe.read_text())["arms"].items():
        method = next(o.partition("=")[2].strip() for o in arm["overrides"] if o.startswith("method.name="))
        kind = "multitask_arms" if arm["phases"] == "multitask" else "sequential_arms"
        arms[kind][name] = "osf" if arm["phases"] == "osf" else method
    return arms


PLAN = {
    "orders": 3,
    **recipe_arms(),
    # on the first task LoRA = O-LoRA = multitask LoRA and DISeL = branches: one selection per method
    "lr_grids": recipe_grid_sizes(),
    "examples_per_task": 160,  # steps_per_task x batch (e.g. 20 x 8)
    "test_per_task": 100,
    "held_out": 100,
}


def estimate(costs: dict, plan: dict = PLAN) -> dict[str, float]:
    """Worker-hours of ``plan`` from measured unit costs: training seconds per example (a step over the batch
    size, averaged over tasks), scoring seconds per example (averaged over tasks)."""
    tasks = len(costs["score_s_per_example"])
    per_example = {m: sum(v.values()) / len(v) / costs["batch_size"] for m, v in costs["train_step_s"].items()}
    score = sum(costs["score_s_per_example"].values()) / tasks
    e, n = plan["examples_per_task"], plan["test_per_task"]
    sequential = plan["orders"] * tasks * e * sum(per_example[m] for m in plan["sequential_arms"].values())
    multitask = tasks * e * sum(per_example[m] for m in plan["multitask_arms"].values())
    grids = plan["lr_grids"]
    selection = e * sum(n_rates * per_example[m] for m, n_rates in grids.items())
    scored = plan["orders"] * len(plan["sequential_arms"]) * tasks * (tasks + 1) // 2  # lower triangle
    scored += len(plan["multitask_arms"]) * tasks + tasks  # multitask: final row; the base model once
    scoring = scored * n * score + sum(grids.values()) * plan["held_out"] * score
    hours = {
        "train_sequential": sequential,
        "train_multitask": multitask,
        "lr_selection_train": selection,
        "scoring": scoring,
    }
    hours = {k: v / 3600 for k, v in hours.items()}
    hours["total"] = sum(hours.values())
    return hours


def main(argv=None) -> int:
    from disel.experiments.data.collator import CausalLMCollator
    from disel.experiments.data.continual import load_tasks, tokenize_rows
    from disel.experiments.data.templates import format_prompt
    from disel.experiments.eval.labels import label_log_likelihoods
    from disel.experiments.models import load_model, load_tokenizer, smollm2_path

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", required=True, help="JSON of unit costs (written; read with --estimate)")
    parser.add_argument("--estimate", action="store_true", help="print PLAN's worker-hours from --out and exit")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--score-batch-size", type=int, default=16, help="test prompts scored per task, one batch")
    parser.add_argument("--methods", nargs="*", default=["lora", "disel", "osf"])
    args = parser.parse_args(argv)
    if args.estimate:
        print(json.dumps(estimate(json.loads(Path(args.out).read_text())), indent=2))
        return 0
    torch.set_num_threads(1)
    path = str(smollm2_path())
    tokenizer, base = load_tokenizer(path), load_model(path)
    tasks = load_tasks(data_dir=args.data_dir, tokenizer=tokenizer)
    collate = CausalLMCollator(tokenizer.pad_token_id)
    out = Path(args.out)
    result: dict = json.loads(out.read_text()) if out.is_file() else {"train_step_s": {}}  # update earlier results
    result.update(batch_size=args.batch_size, threads=1, score_batch_size=args.score_batch_size)
    result["score_s_per_example"] = {}
    base.eval()
    for name, task in tasks.items():
        prompts = [format_prompt("alpaca", row.instruction) for row in task.test[: args.score_batch_size]]
        start = time.process_time()
        label_log_likelihoods(base, tokenizer, prompts, task.labels, batch_size=args.score_batch_size)
        result["score_s_per_example"][name] = (time.process_time() - start) / len(prompts)
    print(result["score_s_per_example"], flush=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for method in args.methods:
        model = _adapted(base, method)
        result["train_step_s"][method] = {
            name: _step_seconds(model, collate(tokenize_rows(task.train[: args.batch_size], tokenizer)), args.steps)
            for name, task in tasks.items()
        }
        print(method, result["train_step_s"][method], flush=True)
        out.write_text(json.dumps(result, indent=2) + "\n")  # after each method: partial results survive
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

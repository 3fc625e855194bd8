"""A tiny DISeL Llama trained with torch's FSDP2 (``fully_shard``), for ``test_fsdp2.py``.

``python tests/fsdp2_train.py MODEL_DIR OUT.pt`` under ``torchrun --nproc_per_node N`` shards every decoder
layer and then the whole model over the N gloo (CPU) processes; each rank trains on its slice of the same
global batch. Run without torchrun (no ``WORLD_SIZE`` in the environment) it is the unsharded one-process
reference. Rank 0 writes what :func:`train` returns, and the world size, to OUT.pt.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
from peft import get_peft_model
from transformers import AutoModelForCausalLM

import disel

STEPS = 4
GLOBAL_BATCH = 4
SEQUENCE_LENGTH = 12
TARGET_MODULES = ["q_proj", "v_proj", "down_proj"]


def global_batches(vocab_size: int) -> list[torch.Tensor]:
    """The same (GLOBAL_BATCH, SEQUENCE_LENGTH) token batches on every rank, one per step."""
    generator = torch.Generator().manual_seed(7)
    return [torch.randint(3, vocab_size, (GLOBAL_BATCH, SEQUENCE_LENGTH), generator=generator) for _ in range(STEPS)]


def train(model_dir: str, shard: bool) -> dict:
    """Global-batch losses per step, the initial and final trainable (adapter) parameters gathered in full,
    and how many parameters were sharded (DTensors) on this rank."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if shard else (0, 1)
    torch.manual_seed(0)  # the same adapter initialisation on every rank
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = disel.DiselConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=TARGET_MODULES)
    model = get_peft_model(base, config)
    with torch.no_grad():  # B = 0 at init: move it so the very first step already trains the gates too
        for name, parameter in model.named_parameters():
            if "disel_B" in name:
                parameter.normal_(0, 0.05)
    initial = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    if shard:
        from torch.distributed.fsdp import fully_shard

        for layer in model.base_model.model.model.layers:
            fully_shard(layer)
        fully_shard(model)
    optimizer = torch.optim.AdamW(disel.param_groups(model, lr=1e-2))
    losses = []
    per_rank = GLOBAL_BATCH // world
    for batch in global_batches(base.config.vocab_size):
        local = batch[rank * per_rank : (rank + 1) * per_rank]
        loss = model(input_ids=local, labels=local).loss  # equal lengths: the mean of rank means is the global mean
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        reported = loss.detach().clone()
        if shard:
            dist.all_reduce(reported)
            reported /= world
        losses.append(float(reported))
    adapter, sharded = {}, 0
    for name, parameter in model.named_parameters():
        sharded += hasattr(parameter, "full_tensor")
        if parameter.requires_grad:
            full = parameter.full_tensor() if hasattr(parameter, "full_tensor") else parameter
            adapter[name] = full.detach().clone()
    total = len(list(model.parameters()))
    return {"losses": losses, "initial": initial, "adapter": adapter, "sharded": sharded, "parameters": total}


def main(model_dir: str, out: str) -> None:
    shard = "WORLD_SIZE" in os.environ
    if shard:
        dist.init_process_group("gloo")
    try:
        result = train(model_dir, shard)
        if not shard or dist.get_rank() == 0:
            torch.save({**result, "world_size": dist.get_world_size() if shard else 1}, out)
    finally:
        if shard:
            dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

"""Load a saved DISeL adapter in a fresh Python process and write its logits (used by test_peft_integration).

Usage: ``python peft_fresh_process_load.py ADAPTER_DIR INPUT_IDS.pt OUT_DIR``

Writes ``OUT_DIR/peft_model.pt`` (``PeftModel.from_pretrained``), ``OUT_DIR/auto.pt``
(``AutoPeftModelForCausalLM.from_pretrained``) and ``OUT_DIR/unknown_before_import.txt`` (the error PEFT
gives for the adapter config before ``import disel``, showing why a loading process must import it first).
The base model is read from the local directory named in the adapter config's ``base_model_name_or_path``.
Tests call :func:`load_in_fresh_process`, which runs this file as a new process.
"""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def main(adapter_dir: str, input_ids_path: str, out_dir: str) -> None:
    import torch

    torch.set_num_threads(1)
    from peft import AutoPeftModelForCausalLM, PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM

    try:  # before `import disel`, PEFT has never heard of the type "DISEL"
        PeftConfig.from_pretrained(adapter_dir)
        message = "loaded without import disel"
    except KeyError as error:
        message = f"KeyError: {error}"
    with open(os.path.join(out_dir, "unknown_before_import.txt"), "w") as f:
        f.write(message)

    import disel  # noqa: F401  (registers DISeL with PEFT)

    input_ids = torch.load(input_ids_path)
    config = PeftConfig.from_pretrained(adapter_dir)
    base = AutoModelForCausalLM.from_pretrained(config.base_model_name_or_path)
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    with torch.no_grad():
        torch.save(model(input_ids).logits, os.path.join(out_dir, "peft_model.pt"))

    auto_model = AutoPeftModelForCausalLM.from_pretrained(adapter_dir).eval()
    with torch.no_grad():
        torch.save(auto_model(input_ids).logits, os.path.join(out_dir, "auto.pt"))


def load_in_fresh_process(adapter_dir, input_ids, out_dir, **env: str):
    """Save ``input_ids`` under ``out_dir``, run this script on ``adapter_dir`` in a new Python process (offline,
    one thread, ``env`` added to the environment), fail with its stderr unless it succeeds; returns ``out_dir``
    (a ``pathlib.Path``) holding ``peft_model.pt``, ``auto.pt`` and ``unknown_before_import.txt``."""
    import subprocess
    from pathlib import Path

    import torch

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(input_ids, out_dir / "ids.pt")
    environment = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1", **env)
    done = subprocess.run(
        [sys.executable, __file__, str(adapter_dir), str(out_dir / "ids.pt"), str(out_dir)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out_dir


if __name__ == "__main__":
    main(*sys.argv[1:4])

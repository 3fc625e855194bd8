"""Load a saved DISeL adapter in a fresh Python process and write its logits (used by test_peft_integration).

Usage: ``python peft_fresh_process_load.py ADAPTER_DIR INPUT_IDS.pt OUT_DIR``

Writes ``OUT_DIR/peft_model.pt`` (``PeftModel.from_pretrained``), ``OUT_DIR/auto.pt``
(``AutoPeftModelForCausalLM.from_pretrained``) and ``OUT_DIR/unknown_before_import.txt`` (the error PEFT
gives for the adapter config before ``import disel``, showing why a loading process must import it first).
The base model is read from the local directory named in the adapter config's ``base_model_name_or_path``.
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


if __name__ == "__main__":
    main(*sys.argv[1:4])

"""Tests of the training side of the experiment path: config, data templates and masking, the training
entry for every method, exact resume after a crash, result files, recipes, and the command line.

Everything runs on tiny random models (``tiny_models.py``) on the CPU, offline."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from disel import io as experiment_io
from disel.experiments.cli.train import main as cli_main
from disel.experiments.config import ConfigError, ExperimentConfig, config_from_dict, load_config
from disel.experiments.data.collator import CausalLMCollator
from disel.experiments.data.datasets import DataFormatError, read_rows, split_rows, tokenize_instruction
from disel.experiments.data.templates import ALPACA, IGNORE_INDEX, MAGICODER, format_prompt
from disel.experiments.train.run import RESULT_FILE, TrainResult, complete_checkpoints, train
from tiny_models import (
    LLAMA_TARGET_MODULES,
    ROBERTA_TARGET_MODULES,
    make_tiny_roberta_classifier,
    make_tiny_roberta_mlm,
)

REPO = Path(__file__).resolve().parents[1]
PAPER_TEXT = REPO.parent / "shared" / "paper" / "paper_text.txt"


# --------------------------------------------------------------------------------------------------
# Fixtures: tiny models and data files
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models gain nothing from threads, and on a shared CI core spinning threads only slow them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def roberta_dir(tmp_path_factory) -> Path:
    return make_tiny_roberta_classifier(tmp_path_factory.mktemp("roberta"), num_labels=2)


@pytest.fixture(scope="module")
def math_file(tmp_path_factory) -> Path:
    """40 addition problems as Alpaca-style JSONL rows."""
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("data") / "math.jsonl"
    with path.open("w") as stream:
        for _ in range(40):
            a, b = rng.randint(1, 50), rng.randint(1, 50)
            row = {"instruction": f"What is {a} + {b}?", "output": f"{a} + {b} = {a + b}. The answer is: {a + b}"}
            stream.write(json.dumps(row) + "\n")
    return path


@pytest.fixture(scope="module")
def sentiment_files(tmp_path_factory) -> tuple[Path, Path]:
    """A learnable two-class CSV task (label 1 iff the sentence says 'great') and its dev set."""
    folder = tmp_path_factory.mktemp("glue")
    good = ["the movie was great", "great acting and a great story", "a great film", "truly great"]
    bad = ["the movie was bad", "i did not like the ending", "a dull film", "the acting was poor"]
    paths = []
    for name, repeat in (("train.csv", 4), ("dev.csv", 1)):
        path = folder / name
        lines = ["sentence,label"] + [f"{s},1" for s in good * repeat] + [f"{s},0" for s in bad * repeat]
        path.write_text("\n".join(lines) + "\n")
        paths.append(path)
    return paths[0], paths[1]


def _config(tiny_llama_dir: Path, train_file: Path, output_dir: Path, **sections) -> ExperimentConfig:
    """A small causal-LM run; ``sections`` update the default sections key by key."""
    raw = {
        "model": {"path": str(tiny_llama_dir)},
        "data": {"train_files": [str(train_file)], "template": "alpaca", "max_length": 64},
        "method": {"name": "disel", "r": 4, "target_modules": ["q_proj", "v_proj", "down_proj"], "lora_dropout": 0.0},
        "training": {
            "output_dir": str(output_dir),
            "max_steps": 4,
            "per_device_train_batch_size": 4,
            "learning_rate": 1.0e-2,
            "logging_steps": 1,
            "save_steps": 2,
            "use_cpu": True,
            "disable_tqdm": True,
        },
    }
    for section, values in sections.items():
        raw[section].update(values)
    return config_from_dict(raw, source="test")


def _adapter_tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter_model.safetensors"))


def test_tiny_model_fixtures_load_offline(tmp_path, tiny_llama_dir):
    """The shared fixtures load with the Auto classes; RoBERTa's tokenizer frames pairs like the real one."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    causal = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    assert {name.rsplit(".", 1)[-1] for name, _ in causal.named_modules()} >= set(LLAMA_TARGET_MODULES)
    roberta_dir = make_tiny_roberta_mlm(tmp_path / "mlm")
    tokenizer = AutoTokenizer.from_pretrained(roberta_dir)
    ids = tokenizer("a cat", "the dog")["input_ids"]
    assert tokenizer.decode(ids) == "<s>a cat</s></s>the dog</s>"
    logits = AutoModelForMaskedLM.from_pretrained(roberta_dir)(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), len(tokenizer))


# --------------------------------------------------------------------------------------------------
# Templates and tokenisation
# --------------------------------------------------------------------------------------------------


def _quoted_template(start_marker: str, end_marker: str) -> str:
    """The lines of paper_text.txt between two markers, joined by newlines (how the paper quotes them)."""
    lines = PAPER_TEXT.read_text(encoding="utf-8").splitlines()
    start = lines.index(start_marker) + 1
    end = lines.index(end_marker)
    return "\n".join(lines[start:end])


def test_templates_are_the_papers_quoted_text():
    """Appendix III.1: the Alpaca and Magicoder templates, line for line; the response follows the last line."""
    assert ALPACA.prompt + "{output}" == "### Instruction:\n{instruction}\n### Response:\n{output}"
    assert MAGICODER.prompt + "{output}" == (
        "You are an exceptionally intelligent coding assistant that consistently delivers\n"
        "accurate and reliable responses to user instructions.\n@@ Instruction\n{instruction}\n@@ Response\n{output}"
    )
    if PAPER_TEXT.is_file():  # the shared paper text sits beside the repository in the project's workspace
        math_intro = "The math runs use the standard Alpaca template:"
        code_intro = "The code runs use the Magicoder template:"
        alpaca = _quoted_template(math_intro, code_intro)
        magicoder = _quoted_template(code_intro, "III.2 Common training hyperparameters")
        assert ALPACA.prompt + "{output}" == alpaca
        assert MAGICODER.prompt + "{output}" == magicoder


def test_format_prompt_keeps_braces_and_passes_raw_text():
    """Code instructions contain braces; they must not be read as format fields. 'none' is the identity."""
    assert format_prompt("alpaca", "f = {x: 1}") == "### Instruction:\nf = {x: 1}\n### Response:\n"
    assert format_prompt("none", "plain") == "plain"
    with pytest.raises(ValueError, match="template"):
        format_prompt("chatml", "x")


def test_loss_only_on_response_tokens_and_eos(tiny_llama_dir):
    """Prompt labels are -100; the labelled tokens decode to exactly the response followed by EOS."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    prompt = format_prompt("magicoder", "Write add(a, b).")
    response = "def add(a, b):\n    return a + b"
    example = tokenize_instruction(tokenizer, prompt, response, max_length=256)
    ids, labels = example["input_ids"], example["labels"]
    learned = [token for token, label in zip(ids, labels) if label != IGNORE_INDEX]
    masked = [token for token, label in zip(ids, labels) if label == IGNORE_INDEX]
    assert all(label in (IGNORE_INDEX, token) for token, label in zip(ids, labels))
    assert tokenizer.decode(learned) == response + tokenizer.eos_token
    assert tokenizer.decode(masked, skip_special_tokens=True) == prompt
    assert ids[-1] == tokenizer.eos_token_id and labels.index(learned[0]) == len(masked)  # prompt first, one block


def test_truncation_keeps_prompt_first_and_drops_examples_without_response(tiny_llama_dir):
    """Truncated to max_length; an example whose prompt fills max_length carries no loss and is dropped."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    prompt = format_prompt("alpaca", "What is 3 + 4?")
    n_prompt = sum(label == IGNORE_INDEX for label in tokenize_instruction(tokenizer, prompt, "7", 256)["labels"])
    cut = tokenize_instruction(tokenizer, prompt, "3 + 4 = 7. The answer is: 7", max_length=n_prompt + 2)
    assert len(cut["input_ids"]) == n_prompt + 2 and sum(label != IGNORE_INDEX for label in cut["labels"]) == 2
    assert tokenize_instruction(tokenizer, prompt, "7", max_length=n_prompt) is None


def test_raw_text_template_learns_every_predicted_token(tiny_llama_dir, tmp_path):
    """template none: text + EOS, every token after the first labelled with itself (the first, here BOS, is
    never predicted by a causal LM)."""
    from transformers import AutoTokenizer

    from disel.experiments.config import DataConfig
    from disel.experiments.data.datasets import prepare_data

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    path = tmp_path / "text.jsonl"
    path.write_text(json.dumps({"text": "Plain prose, no prompt."}) + "\n")
    config = DataConfig(train_files=[str(path)], template="none", max_length=64)
    (example,) = prepare_data(config, tokenizer, "causal_lm").train
    ids, labels = example["input_ids"], example["labels"]
    assert ids == tokenizer("Plain prose, no prompt.")["input_ids"] + [tokenizer.eos_token_id]
    assert labels[1:] == ids[1:]


def test_collator_pads_right_with_masked_labels():
    """Padding positions get pad ids, attention 0 and label -100; real tokens are unchanged."""
    examples = [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}, {"input_ids": [4], "labels": [4]}]
    batch = CausalLMCollator(pad_token_id=9)(examples)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 9, 9]]
    assert batch["labels"].tolist() == [[-100, 2, 3], [4, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


# --------------------------------------------------------------------------------------------------
# Reading data: clear errors, seeded split
# --------------------------------------------------------------------------------------------------


def test_malformed_jsonl_row_names_file_line_and_key(tmp_path, tiny_llama_dir):
    """A row without the instruction key: the error names the file, the line and the expected key."""
    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n\n{"question": "a", "output": "b"}\n')
    config = _config(tiny_llama_dir, path, tmp_path / "out")
    with pytest.raises(DataFormatError, match=rf"{re.escape(str(path))}, line 3: missing key 'instruction'.*question"):
        train(config)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("broken.jsonl", '{"instruction": "a"}\n{"instruction": \n', r"line 2: not valid JSON"),
        ("scalar.jsonl", '["a", "b"]\n', r"line 1: expected a JSON object"),
        ("list.json", '[{"instruction": "a"}, 3]', r"item 1 \(0-based\): expected a JSON object"),
        ("object.json", '{"instruction": "a"}', r"expected a JSON list of objects"),
        ("rows.parquet", "", r"expected a .json, .jsonl, .csv or .tsv file"),
    ],
)
def test_unreadable_files_say_where_and_what(tmp_path, name, text, message):
    """Each malformed file shape gets a message with the file and position."""
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DataFormatError, match=message) as caught:
        read_rows([path])
    assert str(path) in str(caught.value)


def test_missing_data_file_is_named(tmp_path):
    with pytest.raises(DataFormatError, match=r"nowhere\.jsonl.*does not exist"):
        read_rows([tmp_path / "nowhere.jsonl"])


def test_validation_split_is_seeded_disjoint_and_complete(math_file):
    """The held-out split is a function of the seed: same seed same split, other seed other split, no overlap."""
    rows = read_rows([math_file])
    train_a, held_a = split_rows(rows, 0.25, seed=1)
    train_b, held_b = split_rows(rows, 0.25, seed=1)
    _, held_c = split_rows(rows, 0.25, seed=2)
    key = [r.location for r in held_a]
    assert key == [r.location for r in held_b] and key != [r.location for r in held_c]
    assert len(held_a) == 10 and len(train_a) == 30
    assert {r.location for r in train_a}.isdisjoint(key) and len({r.location for r in train_a + held_a}) == 40


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------


def test_unknown_key_names_key_and_file(tmp_path):
    """A typo is an error naming the dotted key, the file and the known keys, never a silent default."""
    path = tmp_path / "recipe.yaml"
    path.write_text("model: {path: /m}\ndata: {train_files: [a.jsonl]}\ntraining: {output_dir: o, learing_rate: 1}\n")
    expected = rf"unknown key 'training.learing_rate' in {re.escape(str(path))}.*learning_rate"
    with pytest.raises(ConfigError, match=expected):
        load_config(path)


def test_types_are_checked_and_yaml_floats_accepted(tmp_path):
    """Wrong types name the key; '1e-3' (a string in YAML 1.1) is accepted as a float."""
    path = tmp_path / "recipe.yaml"
    path.write_text(
        "model: {path: /m}\ndata: {train_files: [a.jsonl]}\ntraining: {output_dir: o, learning_rate: 1e-3}\n"
    )
    assert load_config(path).training.learning_rate == pytest.approx(1e-3)
    with pytest.raises(ConfigError, match=r"training.max_steps in .*expected an integer"):
        load_config(path, ["training.max_steps=ten"])
    with pytest.raises(ConfigError, match=r"method.name in .*expected one of 'disel'"):
        load_config(path, ["method.name=lora2"])
    with pytest.raises(ConfigError, match=r"model.num_labels.*required for sequence_classification"):
        load_config(path, ["model.task_type=sequence_classification"])


def test_overrides_parse_yaml_values_and_json_configs_load(tmp_path):
    """--override values are YAML (ints, lists, null); JSON recipes are read like YAML ones."""
    path = tmp_path / "recipe.json"
    raw = {"model": {"path": "/m"}, "data": {"train_files": ["a.jsonl"]}, "training": {"output_dir": "o"}}
    path.write_text(json.dumps(raw))
    overrides = ["method.r=16", "method.target_modules=[q_proj,v_proj]", "training.save_total_limit=null"]
    config = load_config(path, overrides)
    assert config.method.r == 16 and config.method.target_modules == ["q_proj", "v_proj"]
    assert config.method.scaling_alpha == 32.0  # lora_alpha defaults to 2r
    assert config_from_dict(config.to_dict()) == config


def test_recipes_compose_from_a_setting_and_a_method_overlay(tmp_path):
    """`base` files are merged key by key (later bases, then the recipe, win); lora_alpha follows 2r when only
    method.r is overridden; a base chain that comes back to itself is refused."""
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "setting.yaml").write_text(
        "model: {path: /m}\ndata: {train_files: [a.jsonl], max_length: 64}\n"
        "method: {r: 4, target_modules: [q_proj]}\ntraining: {output_dir: o, learning_rate: 1.0e-3, seed: 7}\n"
    )
    (tmp_path / "method.yaml").write_text(
        "method: {name: disel, gate_lr_ratio: 3.0}\ntraining: {learning_rate: 2.0e-3}\n"
    )
    recipe = tmp_path / "run.yaml"
    recipe.write_text("base: [base/setting.yaml, method.yaml]\ntraining: {output_dir: runs/x}\n")
    config = load_config(recipe, ["method.r=16"])
    assert config.method.r == 16 and config.method.scaling_alpha == 32.0
    assert config.method.target_modules == ["q_proj"] and config.method.gate_lr_ratio == 3.0
    assert config.training.learning_rate == 2.0e-3 and config.training.seed == 7
    assert config.training.output_dir == "runs/x" and config.data.max_length == 64
    from disel.experiments.train.run import build_peft_config

    peft_config = build_peft_config(config)
    assert peft_config.lora_alpha == 32.0 and peft_config.gate_lr_ratio == 3.0  # the optimizer reads it there
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="comes back to itself"):
        load_config(tmp_path / "loop.yaml")
    (tmp_path / "typo.yaml").write_text("base: method.yaml\ntraining: {output_dir: o, lerning_rate: 1}\n")
    with pytest.raises(
        ConfigError, match=r"unknown key 'training.lerning_rate' in .*typo.yaml; did you mean learning_rate"
    ):
        load_config(tmp_path / "typo.yaml")


def test_training_section_is_validated_by_transformers(tmp_path, tiny_llama_dir, math_file):
    """A value of the right type that TrainingArguments itself refuses fails with a ConfigError naming the
    training section, before the model is loaded."""
    config = _config(tiny_llama_dir, math_file, tmp_path / "run", training={"lr_scheduler_type": "no-such-schedule"})
    with pytest.raises(ConfigError, match=r"training in .*TrainingArguments refused it.*no-such-schedule"):
        train(config)


def test_missing_model_path_is_a_clear_error(tmp_path, math_file):
    """A recipe whose placeholder model path was never set fails before anything is loaded, naming the key."""
    config = _config(tmp_path / "no-such-model", math_file, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match=r"model.path .*no-such-model.* does not exist.*never downloads"):
        train(config)


RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


def test_recipes_exist():
    names = {path.stem for path in RECIPES}
    assert {"llama2_7b_metamath_disel", "mistral_7b_magicoder_disel"} <= names
    assert {f"roberta_base_{task}_disel" for task in ("mnli", "sst2", "qnli", "cola", "mrpc")} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=[path.stem for path in RECIPES])
def test_every_recipe_loads_and_validates(recipe):
    """Each recipe is a valid config with the paper's shared settings (Appendices II–III, THEORY.md §1)."""
    config = load_config(recipe)
    assert config.model.path.startswith("/path/to/")  # a placeholder for the user: never a hub id
    assert config.training.bf16 is True and config.training.lr_scheduler_type == "cosine"
    assert config.method.scaling_alpha == 2 * config.method.r or config.method.name == "full"
    effective = config.training.per_device_train_batch_size * config.training.gradient_accumulation_steps
    if config.model.task_type == "causal_lm":
        assert effective == 32 and config.training.gradient_checkpointing
        if config.method.name != "full":
            assert config.method.target_modules == list(LLAMA_TARGET_MODULES)
        if config.method.name == "disel":
            assert config.method.gate_bias_init == -3.0
            assert config.training.learning_rate == 2.0e-4
            assert config.method.gate_lr_ratio * config.training.learning_rate == pytest.approx(1.0e-3)
    else:
        assert config.method.target_modules == list(ROBERTA_TARGET_MODULES)
        assert config.method.modules_to_save == ["classifier"]
        if config.method.name == "disel":
            task = recipe.stem.split("_")[2]
            gate_lr = config.method.gate_lr_ratio * config.training.learning_rate
            assert gate_lr == pytest.approx(1.0e-3 if task in ("cola", "mrpc") else 1.0e-4)
            if task in ("mnli", "sst2", "qnli"):
                assert config.method.gate_bias_init == -7.0


# --------------------------------------------------------------------------------------------------
# Training: every method, result file, resume
# --------------------------------------------------------------------------------------------------


def test_disel_training_writes_schema_and_adapter(tmp_path, tiny_llama_dir, math_file):
    """DISeL trains with its own optimizer groups; train_result.json follows the documented schema."""
    output = tmp_path / "run"
    config = _config(tiny_llama_dir, math_file, output, data={"validation_fraction": 0.1})
    result = train(config)
    written = json.loads((output / RESULT_FILE).read_text())
    assert written == json.loads(json.dumps(result.to_dict()))
    assert TrainResult.read(output) == TrainResult(**written)
    expected_keys = {
        "schema",
        "name",
        "method",
        "rank",
        "task_type",
        "model_path",
        "config",
        "output_dir",
        "world_size",
        "global_step",
        "epoch",
        "final_train_loss",
        "train_loss",
        "eval",
        "loss_history",
        "eval_history",
        "log_history",
        "checkpoints",
        "resumed_from",
        "runtime_s",
        "data",
        "parameters",
        "parameter_sha256_per_rank",
        "versions",
        "finished_at",
    }
    assert set(written) == expected_keys and written["schema"] == "disel.train_result/2"
    # A version-1 file (it also had adapter_dir, always equal to output_dir) still reads.
    old = tmp_path / "old_run"
    old.mkdir()
    (old / RESULT_FILE).write_text(
        json.dumps({**written, "schema": "disel.train_result/1", "adapter_dir": str(output)})
    )
    assert TrainResult.read(old) == TrainResult.read(output)
    assert written["method"] == "disel" and written["world_size"] == 1 and written["global_step"] == 4
    assert [step for step, _ in written["loss_history"]] == [1, 2, 3, 4]
    assert [c["path"] for c in written["checkpoints"]] == ["checkpoint-2", "checkpoint-4"]
    assert "eval_loss" in written["eval"] and written["data"]["validation_rows"] == 4
    saved = json.loads((output / "adapter_config.json").read_text())
    assert saved["peft_type"] == "DISEL" and saved["gate_lr_ratio"] == 5.0 and saved["lora_alpha"] == 8
    tensors = _adapter_tensors(output)
    assert any("disel_gate" in name for name in tensors)
    assert any(bool(t.abs().sum() > 0) for name, t in tensors.items() if "disel_B" in name)  # B moved off zero
    # A finished output_dir is not silently overwritten by a second run without resume.
    with pytest.raises(ConfigError, match=r"already holds a run \(checkpoint-4\).*resume_from_checkpoint=auto"):
        train(config)
    for checkpoint in complete_checkpoints(output):  # nor is one whose only trace is its result file
        (checkpoint / "trainer_state.json").unlink()
    with pytest.raises(ConfigError, match=rf"already holds a run \({RESULT_FILE}\)"):
        train(config)


def test_disel_trainer_uses_the_gate_learning_rate(tmp_path, tiny_llama_dir, math_file):
    """The optimizer has a gate group at gate_lr_ratio x learning_rate with no weight decay (checked through a
    callback): method.gate_lr_ratio reaches the optimizer through the adapter's DiselConfig."""
    from transformers import TrainerCallback

    seen = {}

    class _Groups(TrainerCallback):
        def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
            seen.update(
                {
                    g["name"]: (g["initial_lr"] if "initial_lr" in g else g["lr"], g["weight_decay"])
                    for g in optimizer.param_groups
                }
            )

    config = _config(
        tiny_llama_dir,
        math_file,
        tmp_path / "run",
        method={"gate_lr_ratio": 3.0},
        training={"max_steps": 1, "weight_decay": 0.1, "save_strategy": "no"},
    )
    train(config, callbacks=[_Groups()])
    assert seen["gate"] == (pytest.approx(3.0e-2), 0.0) and seen["decay"] == (1.0e-2, 0.1)


@pytest.mark.parametrize("method", ["lora", "dora", "adalora", "full"])
def test_baselines_train_and_save(tmp_path, tiny_llama_dir, math_file, method):
    """PEFT's LoRA, DoRA, AdaLoRA and full fine-tuning run through the same entry and save their weights."""
    output = tmp_path / method
    adalora = {"tinit": 1, "tfinal": 1, "deltaT": 1}
    config = _config(
        tiny_llama_dir, math_file, output, method={"name": method, "adalora": adalora}, training={"save_strategy": "no"}
    )
    result = train(config)
    assert result.method == method and result.global_step == 4 and result.final_train_loss is not None
    if method == "full":
        assert (output / "model.safetensors").is_file() and result.parameters["trainable"] == result.parameters["total"]
        return
    saved = json.loads((output / "adapter_config.json").read_text())
    assert saved["peft_type"] == {"lora": "LORA", "dora": "LORA", "adalora": "ADALORA"}[method]
    assert saved.get("use_dora", False) == (method == "dora")
    if method == "adalora":
        # total_step came from the Trainer; update_and_allocate ran and fixed a rank pattern by step total - tfinal.
        assert saved["total_step"] == 4 and saved["init_r"] == 6 and saved["target_r"] == 4
        assert saved["rank_pattern"] and len(saved["rank_pattern"]) == 6


def test_adalora_schedule_follows_epochs(tmp_path, tiny_llama_dir, math_file):
    """A recipe giving epochs, not max_steps (as recipes/methods/adalora.yaml does): the schedule's total_step
    and its ratio phases come from the Trainer's own step count (40 rows / batch 4 = 10 steps)."""
    adalora = {"tinit_ratio": 0.1, "tfinal_ratio": 0.2, "deltaT": 1}
    training = {"max_steps": -1, "num_train_epochs": 1, "save_strategy": "no"}
    config = _config(
        tiny_llama_dir, math_file, tmp_path / "run", method={"name": "adalora", "adalora": adalora}, training=training
    )
    assert train(config).global_step == 10
    saved = json.loads((tmp_path / "run" / "adapter_config.json").read_text())
    assert (saved["total_step"], saved["tinit"], saved["tfinal"]) == (10, 1, 2)


class _SimulatedCrash(RuntimeError):
    pass


def _crash_after_checkpoint(step: int):
    from transformers import TrainerCallback

    class _Crash(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == step:
                raise _SimulatedCrash(f"simulated crash after saving step {step}")

    return _Crash()


@pytest.mark.parametrize("method", ["disel", "adalora"])
def test_resume_after_crash_equals_uninterrupted_run(tmp_path, tiny_llama_dir, math_file, method):
    """Crash after the step-3 checkpoint, resume with resume=auto: final adapter and loss history are identical
    to an uninterrupted run (dropout on, so the RNG state must be restored too; AdaLoRA also needs its
    importance statistics, which PEFT keeps only in memory)."""
    sections = dict(
        method={"name": method, "lora_dropout": 0.1, "adalora": {"tinit": 1, "tfinal": 1}},
        training={"max_steps": 6, "save_steps": 3},
    )
    straight = train(_config(tiny_llama_dir, math_file, tmp_path / "straight", **sections))

    crashed = _config(tiny_llama_dir, math_file, tmp_path / "crashed", **sections)
    with pytest.raises(_SimulatedCrash):
        train(crashed, callbacks=[_crash_after_checkpoint(3)])
    assert [p.name for p in complete_checkpoints(tmp_path / "crashed")] == ["checkpoint-3"]
    assert not (tmp_path / "crashed" / RESULT_FILE).exists()
    crashed.training.resume_from_checkpoint = "auto"
    resumed = train(crashed)

    assert resumed.resumed_from == str(tmp_path / "crashed" / "checkpoint-3")
    assert resumed.loss_history == straight.loss_history and len(resumed.loss_history) == 6
    expected, actual = _adapter_tensors(tmp_path / "straight"), _adapter_tensors(tmp_path / "crashed")
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name


def test_resume_auto_skips_a_checkpoint_interrupted_mid_save(tmp_path, tiny_llama_dir, math_file):
    """A checkpoint folder without trainer_state.json (written last) is incomplete and never resumed from."""
    output = tmp_path / "run"
    train(_config(tiny_llama_dir, math_file, output, training={"max_steps": 2, "save_steps": 1}))
    (output / "checkpoint-2" / "trainer_state.json").unlink()  # as if the process died while saving step 2
    assert [p.name for p in complete_checkpoints(output)] == ["checkpoint-1"]
    result = train(
        _config(
            tiny_llama_dir,
            math_file,
            output,
            training={"max_steps": 2, "save_steps": 1, "resume_from_checkpoint": "auto"},
        )
    )
    assert result.resumed_from.endswith("checkpoint-1") and result.global_step == 2


def test_sequence_classification_with_fresh_head(tmp_path, roberta_dir, sentiment_files):
    """RoBERTa-style classification from CSV: accuracy is evaluated and the head is saved with the adapter."""
    train_csv, dev_csv = sentiment_files
    output = tmp_path / "cls"
    raw = {
        "model": {"path": str(roberta_dir), "task_type": "sequence_classification", "num_labels": 2},
        "data": {"train_files": [str(train_csv)], "validation_files": [str(dev_csv)], "text_field": "sentence"},
        "method": {
            "name": "disel",
            "r": 4,
            "target_modules": ["query", "value", "intermediate.dense", "output.dense"],
            "modules_to_save": ["classifier"],
            "gate_bias_init": -7.0,
            "lora_dropout": 0.0,
        },
        "training": {
            "output_dir": str(output),
            "num_train_epochs": 2,
            "per_device_train_batch_size": 8,
            "learning_rate": 1.0e-2,
            "save_strategy": "no",
            "use_cpu": True,
            "disable_tqdm": True,
        },
    }
    result = train(config_from_dict(raw))
    assert result.global_step == 8
    # the final accuracy is the last epoch's, a count of right answers over the validation rows
    accuracy, rows = result.eval["eval_accuracy"], result.data["validation_rows"]
    assert accuracy == result.eval_history[-1]["eval_accuracy"] and accuracy * rows == pytest.approx(
        round(accuracy * rows)
    )
    assert [e["epoch"] for e in result.eval_history][:2] == [1.0, 2.0]
    tensors = _adapter_tensors(output)
    assert any("classifier" in name for name in tensors) and any("disel_gate" in name for name in tensors)


def test_classification_label_errors_name_row(tmp_path, roberta_dir):
    """A label outside [0, num_labels) is reported with its file and line."""
    path = tmp_path / "bad.csv"
    path.write_text("sentence,label\ngood,1\nbad,7\n")
    raw = {
        "model": {"path": str(roberta_dir), "task_type": "sequence_classification", "num_labels": 2},
        "data": {"train_files": [str(path)], "text_field": "sentence"},
        "training": {"output_dir": str(tmp_path / "o"), "use_cpu": True},
    }
    with pytest.raises(DataFormatError, match=r"bad\.csv, line 3: label 'label' must be an integer in \[0, 2\)"):
        train(config_from_dict(raw))


def test_local_datasets_source(tmp_path, tiny_llama_dir, math_file):
    """A `datasets` dataset saved locally (save_to_disk) trains like a JSONL file of the same rows."""
    import datasets

    rows = [json.loads(line) for line in math_file.read_text().splitlines()]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "ds"))
    result = train(
        _config(
            tiny_llama_dir,
            math_file,
            tmp_path / "run",
            data={"train_files": [], "dataset": str(tmp_path / "ds")},
            training={"max_steps": 1},
        )
    )
    assert result.data["train_examples"] == 40


# --------------------------------------------------------------------------------------------------
# Command line and atomic files
# --------------------------------------------------------------------------------------------------


def test_cli_prints_config_and_reports_errors_in_one_line(tmp_path, capsys, tiny_llama_dir, math_file):
    """--print-config shows the resolved overrides; a missing model path exits 2 with the key named."""
    path = tmp_path / "recipe.yaml"
    path.write_text(
        f"model: {{path: /path/to/model}}\ndata: {{train_files: ['{math_file}']}}\n"
        f"training: {{output_dir: '{tmp_path / 'out'}'}}\n"
    )
    assert cli_main(["--config", str(path), "--override", "method.r=2", "--print-config"]) == 0
    assert "r: 2" in capsys.readouterr().out
    assert cli_main(["--config", str(path)]) == 2
    assert "disel-train: error: model.path '/path/to/model' does not exist" in capsys.readouterr().err
    assert cli_main(["--config", str(path), "--override", "method.rank=2"]) == 2
    assert "unknown key 'method.rank'" in capsys.readouterr().err


def test_cli_trains(tmp_path, tiny_llama_dir, math_file):
    """The command line runs a recipe end to end (the function behind `disel-train`)."""
    path = tmp_path / "recipe.yaml"
    config = _config(tiny_llama_dir, math_file, tmp_path / "out", training={"max_steps": 1, "save_strategy": "no"})
    experiment_io.write_yaml_atomic(path, config.to_dict())
    assert cli_main(["--config", str(path)]) == 0
    assert json.loads((tmp_path / "out" / RESULT_FILE).read_text())["global_step"] == 1


def test_atomic_json_write_replaces_whole_file_or_nothing(tmp_path, monkeypatch):
    """A failed write leaves the previous file intact and no temporary behind; NaN is written as null."""
    path = tmp_path / "result.json"
    experiment_io.write_json_atomic(path, {"loss": float("nan"), "steps": (1, 2)})
    assert json.loads(path.read_text()) == {"loss": None, "steps": [1, 2]}

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(experiment_io.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        experiment_io.write_json_atomic(path, {"loss": 1.0})
    assert json.loads(path.read_text()) == {"loss": None, "steps": [1, 2]}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


@pytest.mark.parametrize(
    "module, argv, abbreviated",
    [
        ("disel.experiments.cli.train", ["--config", "r.yaml", "--print-conf"], "--print-conf"),
        ("disel.experiments.cli.eval", ["perplexity", "--base", "b", "--out", "o.json", "--max-len", "8"], "--max-len"),
        ("disel.experiments.cli.study", ["--max-step", "3"], "--max-step"),
    ],
)
def test_every_cli_names_itself_and_refuses_abbreviated_flags(module, argv, abbreviated, capsys):
    """Each console script shows its own name (not `python -m ...`) and never takes a prefix for another flag."""
    import importlib

    command = {"train": "disel-train", "eval": "disel-eval", "study": "disel-study"}[module.rsplit(".", 1)[1]]
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(module).main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: {command}") and f"{command}: error: unrecognized arguments: {abbreviated}" in err

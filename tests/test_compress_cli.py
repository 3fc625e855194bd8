"""``disel-eval components``, ``disel-prune`` and ``disel-merge-static`` on a tiny saved model (issue 11 item 7).

The adapter is planted: component 0 of every layer has ``b_0 = 0`` (contributes nothing, so pruning with
threshold 0 removes exactly it and the output does not move) and component 1 has a zero gate row (its gate
is the constant σ(b_g), so a static merge folds exactly it, to float precision: its measured gate std is 0
up to the last bit of float32).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

import disel
from disel.experiments.cli import compress
from disel.experiments.cli import eval as eval_cli
from tiny_models import LLAMA_TARGET_MODULES

RANK = 4
TEXTS = [
    "def add(a, b):\n    return a + b",
    "The quick brown fox jumps over the lazy dog.",
    "What is 3 + 4? 3 + 4 = 7.",
]


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_llama_dir):
    """(base dir, planted adapter dir, a JSONL text domain, the adapter's logits on the texts)."""
    root = tmp_path_factory.mktemp("compress")
    base = tiny_llama_dir
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        disel.DiselConfig(r=RANK, lora_alpha=8, target_modules=list(LLAMA_TARGET_MODULES)),
    )
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "disel_" in name:
                p.normal_(0, 0.3)
        for layer in model.modules():
            if isinstance(layer, disel.tuner.DiselLayer):
                layer.disel_B["default"].weight[:, 0] = 0.0  # component 0 contributes nothing
                layer.disel_gate["default"].weight[1] = 0.0  # component 1: constant gate σ(b_1)
    model.save_pretrained(root / "adapter")
    data = root / "texts.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    return base, root / "adapter", data, _logits(model.eval(), base)


def _logits(model, base) -> torch.Tensor:
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.padding_side = "right"
    encoded = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**encoded).logits
    return logits[encoded["attention_mask"].bool()]  # (tokens, vocab), padding left out


def _stats(saved, tmp_path, capsys) -> Path:
    base, adapter, data, _ = saved
    out = tmp_path / "stats" / "components.json"
    assert (
        eval_cli.main(
            [
                "components",
                "--base",
                str(base),
                "--adapter",
                str(adapter),
                "--domain",
                f"text={data}",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    return out


def _adapted_layers(model) -> list:
    return [m for m in model.modules() if isinstance(m, disel.tuner.DiselLayer)]


def test_eval_components_writes_the_statistics_and_prints_the_headline(saved, tmp_path, capsys):
    """The statistics JSON loads back, covers every adapted layer, sees b_0 = 0 as zero contribution and the
    constant gate as zero std, counts the non-padding tokens, and the headline numbers are printed."""
    out = _stats(saved, tmp_path, capsys)
    printed = capsys.readouterr().out
    stats = disel.ComponentStatistics.load_json(out)
    assert len(stats.layers) == 2 * len(LLAMA_TARGET_MODULES)
    tokenizer = AutoTokenizer.from_pretrained(saved[0])
    tokens = sum(len(tokenizer(t)["input_ids"]) for t in TEXTS)
    for entry in stats.layers:
        assert entry.rank == RANK and entry.tokens == tokens
        assert entry.contribution[0] == 0.0 and min(entry.contribution[1:]) > 0
        assert entry.gate_std[1] < 1e-6 < min(entry.gate_std[2:])  # σ's vector and scalar paths differ by an ulp
    assert list(stats.domains) == ["text"]
    assert json.loads(out.read_text())["model"]["adapter"] == str(saved[1])
    total = RANK * len(stats.layers)
    largest = max(c for entry in stats.layers for c in entry.contribution)
    small = sum(c <= 0.01 * largest for entry in stats.layers for c in entry.contribution)
    assert small >= len(stats.layers)  # at least the b = 0 components
    assert f"{total} components in {len(stats.layers)} adapted layers; tokens: text={tokens}" in printed
    ordered = sorted(c for entry in stats.layers for c in entry.contribution)
    half = sum(ordered[: total // 2]) / sum(ordered)
    assert f"the smaller half of the components carries {half:.1%} of the summed contribution" in printed
    assert f"{small}/{total} components are <= 0.01 x the largest" in printed
    assert f"gate std < 0.01 on every domain: {len(stats.layers)}/{total} components\n" in printed
    # Regression (issue 19): the headline called small contributions "prunable", a decision the data do not support.
    assert "prunable" not in printed and "mergeable" not in printed


def test_disel_prune_writes_a_smaller_adapter_that_plain_peft_reloads(saved, tmp_path, capsys):
    """threshold 0 removes exactly the b = 0 components: report and rank_pattern say rank 3 per layer, the
    output change is measured as 0, and the reloaded adapter gives the original logits."""
    base, adapter, data, logits = saved
    stats = _stats(saved, tmp_path, capsys)
    out = tmp_path / "pruned"
    assert (
        compress.main_prune(
            [
                "--base",
                str(base),
                "--adapter",
                str(adapter),
                "--stats",
                str(stats),
                "--threshold",
                "0",
                "--domain",
                f"text={data}",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads((out / "prune_report.json").read_text())
    assert set(report["rank_after"].values()) == {RANK - 1}
    assert all(kept == list(range(1, RANK)) for kept in report["kept"].values())
    assert report["output_change"]["max_abs"] < 1e-5 and report["parameters_after"] < report["parameters_before"]
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), out).eval()
    assert {layer.r["default"] for layer in _adapted_layers(reloaded)} == {RANK - 1}
    torch.testing.assert_close(_logits(reloaded, base), logits, rtol=1e-5, atol=1e-5)
    assert "disel-prune: components 56 -> 42" in capsys.readouterr().out


def test_disel_merge_static_folds_the_constant_gates_into_a_base_that_reloads(saved, tmp_path, capsys):
    """The constant-gate component is folded into merged_base/, the gated rest reloads on it with plain
    PEFT calls, and the pair gives the original logits to float precision."""
    base, adapter, data, logits = saved
    stats = _stats(saved, tmp_path, capsys)
    out = tmp_path / "merged"
    assert (
        compress.main_merge_static(
            [
                "--base",
                str(base),
                "--adapter",
                str(adapter),
                "--stats",
                str(stats),
                "--std-threshold",
                "1e-6",
                "--domain",
                f"text={data}",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads((out / "merge_report.json").read_text())
    assert all(merged == [1] for merged in report["merged"].values()) and not report["fully_static"]
    assert set(report["remaining_rank"].values()) == {RANK - 1}
    merged_base = AutoModelForCausalLM.from_pretrained(out / "merged_base")
    original_base = AutoModelForCausalLM.from_pretrained(base)
    assert not torch.equal(
        merged_base.model.layers[0].self_attn.q_proj.weight, original_base.model.layers[0].self_attn.q_proj.weight
    )
    reloaded = PeftModel.from_pretrained(merged_base, out).eval()
    assert {layer.r["default"] for layer in _adapted_layers(reloaded)} == {RANK - 1}
    torch.testing.assert_close(_logits(reloaded, base), logits, rtol=1e-4, atol=1e-5)
    assert AutoTokenizer.from_pretrained(out / "merged_base")("a b")["input_ids"]


def test_statistics_on_the_offline_domains_by_default(saved, tmp_path, capsys):
    """Without --domain the offline math / general / code domains are measured, each named in the JSON."""
    base, adapter, _, _ = saved
    out = tmp_path / "offline.json"
    assert (
        eval_cli.main(
            [
                "components",
                "--base",
                str(base),
                "--adapter",
                str(adapter),
                "--n",
                "2",
                "--max-length",
                "64",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    stats = disel.ComponentStatistics.load_json(out)
    assert list(stats.domains) == ["math", "general", "code"]
    assert all(entries[0].tokens > 0 for entries in stats.domains.values())


@pytest.mark.parametrize(
    "change, message",
    [
        ({"--adapter": "missing"}, "--adapter"),
        ({"--base": "missing"}, "--base"),
        ({"--keep-fraction": "1.5"}, "--keep-fraction must be in (0, 1]"),
        ({"--domain": "no-equals-sign"}, "NAME=FILE.jsonl"),
        ({"--domain": "empty=EMPTY"}, "holds no rows"),  # regression (issue 19): a traceback after loading
        ({"--stats": "missing.json"}, "--stats"),
        ({"--out": "used"}, "is not empty"),
        ({"--dtype": "float8"}, "--dtype"),
    ],
)
def test_disel_prune_refuses_bad_arguments_in_one_line(saved, tmp_path, capsys, change, message):
    """A bad value prints one line `disel-prune: error: ...` naming it and returns 2, before any work."""
    base, adapter, data, _ = saved
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "keep.txt").write_text("x")
    (tmp_path / "stats.json").write_text(json.dumps({"layers": []}))
    (tmp_path / "empty.jsonl").write_text("\n")
    flags = {
        "--base": str(base),
        "--adapter": str(adapter),
        "--stats": str(tmp_path / "stats.json"),
        "--keep-fraction": "0.5",
        "--domain": f"text={data}",
        "--out": str(tmp_path / "new"),
    }
    flags.update(
        {k: (str(tmp_path / v) if k in ("--adapter", "--base", "--stats", "--out") else v) for k, v in change.items()}
    )
    flags["--domain"] = flags["--domain"].replace("EMPTY", str(tmp_path / "empty.jsonl"))
    assert compress.main_prune([item for pair in flags.items() for item in pair]) == 2
    err = capsys.readouterr().err
    assert err.startswith("disel-prune: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "new").exists()  # checked before anything is written


def test_eval_components_refuses_a_folder_as_out_in_one_line(saved, tmp_path, capsys):
    base, adapter, _, _ = saved
    # disel-eval reports usage errors by returning 2 (no SystemExit, no traceback)
    assert eval_cli.main(["components", "--base", str(base), "--adapter", str(adapter), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("disel-eval: error: --out") and err.count("\n") == 1


def test_merge_static_cli_names_itself_and_refuses_abbreviations(capsys):
    with pytest.raises(SystemExit) as stop:
        compress.main_merge_static(["--std-thr", "0.1"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.startswith("usage: disel-merge-static")


def test_the_console_scripts_point_at_these_mains():
    """pyproject registers disel-prune / disel-merge-static at the functions tested above."""
    import importlib
    import re

    text = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    scripts = dict(re.findall(r'^(disel-[\w-]+) = "([\w.:]+)"$', text.split("[project.scripts]")[1], re.MULTILINE))
    for command, function in (("disel-prune", compress.main_prune), ("disel-merge-static", compress.main_merge_static)):
        module, _, name = scripts[command].partition(":")
        assert getattr(importlib.import_module(module), name) is function


def _foreign_stats(adapter: Path, path: Path, mismatch: str) -> str:
    """Statistics JSON shaped like another adapter's: one layer of another rank, or one layer missing."""
    from disel.components.adapter_dir import saved_ranks

    ranks = saved_ranks(adapter)
    modules = sorted(ranks)
    if mismatch == "rank":
        ranks[modules[0]] = RANK + 4
    else:
        del ranks[modules[0]]
    layers = [
        disel.LayerComponents(module, "default", 2.0, 10, *[[0.1] * rank for _ in range(5)])
        for module, rank in ranks.items()
    ]
    disel.ComponentStatistics(layers=layers).save_json(path)
    return modules[0]


@pytest.mark.parametrize("command", ["disel-prune", "disel-merge-static"])
@pytest.mark.parametrize("mismatch", ["rank", "layers"])
def test_statistics_of_another_adapter_are_refused_in_one_line_before_loading(
    saved, tmp_path, capsys, monkeypatch, command, mismatch
):
    """Regression (issue 19 item 3): statistics from another adapter (other rank or layers) exited 1 with a
    traceback after loading everything, a progress bar left open. Now one line naming --stats and the layer,
    status 2, and no model is loaded (the loader is made to fail to prove it)."""
    base, adapter, data, _ = saved
    module = _foreign_stats(adapter, tmp_path / "foreign.json", mismatch)

    def no_loading(args):
        raise AssertionError("the base model was loaded before --stats was checked")

    monkeypatch.setattr(compress, "_load_base", no_loading)
    main = compress.main_prune if command == "disel-prune" else compress.main_merge_static
    criterion = ["--keep-fraction", "0.5"] if command == "disel-prune" else ["--std-threshold", "1e-3"]
    flags = ["--base", str(base), "--adapter", str(adapter), "--stats", str(tmp_path / "foreign.json")]
    assert main([*flags, *criterion, "--domain", f"text={data}", "--out", str(tmp_path / "new")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{command}: error: --stats ") and "does not fit --adapter" in err
    assert repr(module) in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("command", ["disel-prune", "disel-merge-static"])
def test_a_refusal_after_loading_is_one_line_and_closes_the_progress_bar(saved, tmp_path, capsys, command):
    """An adapter saved without safetensors cannot be matched from its header: the library's own check
    refuses the statistics after loading. That too is one line and status 2, and the progress bar is closed
    (its last render ends with a newline before the error line) instead of left open."""
    base, _, data, _ = saved
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        disel.DiselConfig(r=RANK + 2, target_modules=list(LLAMA_TARGET_MODULES)),
    )
    model.save_pretrained(tmp_path / "bin_adapter", safe_serialization=False)
    assert not (tmp_path / "bin_adapter" / "adapter_model.safetensors").exists()
    from disel.components.adapter_dir import saved_ranks

    assert saved_ranks(tmp_path / "bin_adapter") is None
    modules = [name for name, m in model.base_model.model.named_modules() if isinstance(m, disel.tuner.DiselLayer)]
    layers = [
        disel.LayerComponents(module, "default", 2.0, 10, *[[0.1] * RANK for _ in range(5)]) for module in modules
    ]
    disel.ComponentStatistics(layers=layers).save_json(tmp_path / "rank4.json")
    main = compress.main_prune if command == "disel-prune" else compress.main_merge_static
    criterion = ["--keep-fraction", "0.5"] if command == "disel-prune" else ["--std-threshold", "1e-3"]
    flags = ["--base", str(base), "--adapter", str(tmp_path / "bin_adapter"), "--stats", str(tmp_path / "rank4.json")]
    assert main([*flags, *criterion, "--domain", f"text={data}", "--out", str(tmp_path / "new")]) == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert lines[-1].startswith(f"{command}: error: stats for ") and "recompute component_statistics" in lines[-1]
    assert "Traceback" not in err and err.endswith("\n")
    assert "measuring" in err and err.split(f"{command}: error:")[0].endswith("\n")

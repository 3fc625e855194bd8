"""`disel-eval` shows progress and its scores (issue 10, item 6): each command prints its headline numbers before
``wrote ...`` and draws tqdm bars on stderr over its loops, while the library functions stay quiet unless asked."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import disel
from disel.experiments.cli.eval import main
from disel.experiments.eval.perplexity import causal_lm_perplexity
from disel.experiments.eval.progress import show_progress
from disel.experiments.models import load_model_for_eval
from tiny_models import LLAMA_TARGET_MODULES, make_tiny_roberta_classifier, make_tiny_roberta_mlm

TEXTS = ["the quick brown fox jumps over the lazy dog.", "def add(a, b):\n    return a + b\n"]


@pytest.fixture(scope="module")
def adapter_run(tiny_llama_dir, tmp_path_factory) -> Path:
    """A training output with one DISeL checkpoint (random gates and B, so the adapter moves the model)."""
    from peft import get_peft_model

    run = tmp_path_factory.mktemp("run")
    torch.manual_seed(3)
    config = disel.DiselConfig(r=4, target_modules=list(LLAMA_TARGET_MODULES), init_weights=False)
    get_peft_model(load_model_for_eval(tiny_llama_dir, device="cpu").model, config).save_pretrained(
        run / "checkpoint-1"
    )
    return run


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _bar_finished(err: str, description: str) -> bool:
    """Whether stderr holds a tqdm bar named ``description`` drawn up to 100%."""
    return re.search(rf"{re.escape(description)}: +100%\|", err) is not None


def _lines_before_wrote(out: str) -> list[str]:
    lines = out.splitlines()
    wrote = [i for i, line in enumerate(lines) if line.startswith("wrote ")]
    assert wrote, f"no 'wrote' line in stdout: {out!r}"
    return lines[: wrote[0]]


def test_perplexity_command_prints_scores_and_draws_a_bar(tiny_llama_dir, tmp_path, capsys):
    """`perplexity` prints the perplexity of each text set and their mean (the values written) before 'wrote'."""
    texts = _jsonl(tmp_path / "prose.jsonl", [{"text": t} for t in TEXTS])
    out = tmp_path / "ppl.json"
    argv = ["perplexity", "--base", str(tiny_llama_dir), "--device", "cpu", "--text", str(texts), "--max-length", "8"]
    assert main([*argv, "--batch-size", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    record = json.loads(out.read_text())
    prose, mean = record["corpora"]["prose"]["perplexity"], record["mean_perplexity"]
    headline = f"perplexity: prose={prose:.4g}; mean={mean:.4g}"
    assert headline in _lines_before_wrote(printed.out)
    assert _bar_finished(printed.err, "perplexity")


def test_mlm_perplexity_command_prints_scores_before_wrote(tmp_path, capsys):
    """`mlm-perplexity` prints the masked-LM perplexity of each text set and their mean before 'wrote'."""
    classifier = make_tiny_roberta_classifier(tmp_path / "classifier")
    mlm = make_tiny_roberta_mlm(tmp_path / "mlm")
    texts = _jsonl(tmp_path / "prose.jsonl", [{"text": t} for t in TEXTS])
    out = tmp_path / "mlm.json"
    argv = ["mlm-perplexity", "--base", str(classifier), "--pretrained-mlm", str(mlm), "--device", "cpu"]
    assert main([*argv, "--text", str(texts), "--dtype", "float32", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    record = json.loads(out.read_text())
    prose, mean = record["corpora"]["prose"]["perplexity"], record["mean_perplexity"]
    assert f"mlm-perplexity: prose={prose:.4g}; mean={mean:.4g}" in _lines_before_wrote(printed.out)
    assert _bar_finished(printed.err, "mlm perplexity")


def test_gsm8k_command_prints_accuracy_with_n(tiny_llama_dir, tmp_path, capsys):
    """`gsm8k` prints strict and flexible exact match and the number of questions before 'wrote'."""
    rows = [{"question": "2 + 2?", "answer": "4"}, {"question": "3 + 3?", "answer": "6"}]
    out = tmp_path / "gsm8k.json"
    data = _jsonl(tmp_path / "gsm8k.jsonl", rows)
    argv = ["gsm8k", "--base", str(tiny_llama_dir), "--device", "cpu", "--dtype", "float32", "--data", str(data)]
    assert main([*argv, "--max-new-tokens", "3", "--batch-size", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    record = json.loads(out.read_text())
    headline = (
        f"gsm8k: exact_match={record['exact_match']:.4g}, exact_match_flexible={record['exact_match_flexible']:.4g}; "
        f"mean={record['exact_match']:.4g} (n=2)"
    )
    assert headline in _lines_before_wrote(printed.out)
    assert _bar_finished(printed.err, "generating") and "2/2" in printed.err  # one batch per question


def test_gates_command_prints_the_mean_gate_per_domain(tiny_llama_dir, adapter_run, tmp_path, capsys):
    """`gates` prints per domain the mean gate over all recorded values, and per kind (attention / MLP)."""
    domain = _jsonl(tmp_path / "prose.jsonl", [{"text": t} for t in TEXTS])
    out = tmp_path / "gates.json"
    argv = ["gates", "--base", str(tiny_llama_dir), "--adapter", str(adapter_run / "checkpoint-1"), "--device", "cpu"]
    assert main([*argv, "--domain", f"prose={domain}", "--batch-size", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    prose = json.loads(out.read_text())["domains"]["prose"]
    mean = sum(m["mean"] * m["count"] for m in prose["modules"]) / sum(m["count"] for m in prose["modules"])
    kinds = f"attention={prose['by_kind']['attention']['mean']:.3f}, mlp={prose['by_kind']['mlp']['mean']:.3f}"
    assert f"gates prose: mean gate {mean:.3f} ({kinds}); 2 sequences" in _lines_before_wrote(printed.out)
    assert _bar_finished(printed.err, "gates prose")


def test_retention_command_draws_a_bar_over_checkpoints(tiny_llama_dir, adapter_run, tmp_path, capsys):
    """`retention` draws a bar over the checkpoints to evaluate and prints one line per row of the table."""
    texts = _jsonl(tmp_path / "prose.jsonl", [{"text": t} for t in TEXTS])
    table = tmp_path / "retention.json"
    argv = ["retention", "--output-dir", str(adapter_run), "--base", str(tiny_llama_dir), "--evaluator", "perplexity"]
    assert main([*argv, "--text", str(texts), "--max-length", "8", "--table", str(table)]) == 0
    printed = capsys.readouterr()
    rows = json.loads(table.read_text())["rows"]
    assert _bar_finished(printed.err, "retention perplexity") and "2/2" in printed.err  # base + checkpoint-1
    assert "[retention] perplexity: evaluating checkpoint-1 (step 1)" in printed.out
    for row in rows:
        assert f"  {row['checkpoint']} (step {row['step']}): mean={row['mean']:.4g}" in printed.out.splitlines()


def test_library_calls_are_quiet_unless_asked(tiny_llama_dir, capsys):
    """Outside `disel-eval` an evaluation prints nothing; `show_progress()` turns its bar on for the block only."""
    loaded = load_model_for_eval(tiny_llama_dir, device="cpu")
    capsys.readouterr()  # transformers' own weight-loading bar
    quiet = causal_lm_perplexity(loaded.model, loaded.tokenizer, TEXTS, max_length=8)
    assert capsys.readouterr() == ("", "")
    with show_progress():
        shown = causal_lm_perplexity(loaded.model, loaded.tokenizer, TEXTS, max_length=8)
    assert _bar_finished(capsys.readouterr().err, "perplexity")
    assert shown == quiet  # the bar changes nothing measured
    causal_lm_perplexity(loaded.model, loaded.tokenizer, TEXTS, max_length=8)
    assert capsys.readouterr() == ("", "")  # off again after the block

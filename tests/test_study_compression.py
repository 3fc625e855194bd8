"""The issue-11 compression study (a ``kind: compression`` recipe of ``disel-study``) end to end on a tiny
Llama: an evidence-style folder (the evidence's own data stage), a planted DISeL adapter and a LoRA adapter;
the results file, the table, the figure (``paper_figs``), resumption, and the one-line errors.

The adapter is planted as in ``test_compress_cli``: component 1 of every layer has a zero gate row (a constant
gate), so a static merge below any positive std threshold folds exactly those, a quarter of the components;
components 2 and 3 share one gate, so alignment has a group to align (exactly: the output does not move).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from test_portable_adapters import absolute_paths
from test_study_run import RECIPE, TINY
from transformers import AutoModelForCausalLM

import disel
from tiny_models import LLAMA_TARGET_MODULES

RANK = 4


def _adapters(base: Path, root: Path) -> tuple[Path, Path]:
    """(planted DISeL adapter, random LoRA adapter), saved under ``root/adapters``."""
    torch.manual_seed(3)
    config = disel.DiselConfig(r=RANK, lora_alpha=8, target_modules=list(LLAMA_TARGET_MODULES))
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), config)
    with torch.no_grad():
        for layer in (m for m in model.modules() if isinstance(m, disel.tuner.DiselLayer)):
            gate = layer.disel_gate["default"]
            for parameter in (layer.disel_A["default"].weight, layer.disel_B["default"].weight, gate.weight, gate.bias):
                parameter.normal_(0, 0.3)
            gate.weight[1] = 0.0  # component 1: the constant gate σ(b_1)
            gate.weight[3], gate.bias[3] = gate.weight[2], gate.bias[2]  # components 2, 3: one gate (aligned)
    model.save_pretrained(root / "adapters" / "disel_paper-seed0")
    lora = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        LoraConfig(r=RANK, target_modules=list(LLAMA_TARGET_MODULES), init_lora_weights=False),
    )
    lora.save_pretrained(root / "adapters" / "lora-seed0")
    return root / "adapters" / "disel_paper-seed0", root / "adapters" / "lora-seed0"


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_llama_dir) -> dict:
    """The recipe of a tiny study (an evidence-style folder with its data stage done, two adapters)."""
    from disel.experiments.models import load_tokenizer
    from disel.experiments.study.config import load_study_config
    from disel.experiments.study.stages import prepare_data

    root = tmp_path_factory.mktemp("compression")
    base = tiny_llama_dir
    overrides = [*TINY, f"model_path={base}"]
    evidence = root / "evidence"
    prepare_data(load_study_config(RECIPE, overrides), evidence, load_tokenizer(base))
    adapter, lora = _adapters(base, root)
    return {
        "kind": "compression",
        "evidence_dir": str(evidence),
        "adapter": str(adapter),
        "lora_adapter": str(lora),
        "out": str(root / "unused"),
        "evidence_recipe": str(RECIPE),
        "evidence_overrides": overrides,
        "fractions": [0, 0.5],
        "merge_std": [0, 1e-6],
        "stats_texts": 4,
        "bootstrap_replicates": 50,
        "timing_repetitions": 2,
        "timing_tokens": 16,
    }


def main(recipe: dict, out: Path, *overrides: str) -> int:
    """``disel-study --recipe <recipe written as YAML> --output-dir out [--override ...]``."""
    import yaml

    from disel.experiments.cli.study import main as study_main

    path = out.parent / f"{out.name}-recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return study_main(
        ["--recipe", str(path), "--output-dir", str(out), *(["--override", *overrides] if overrides else [])]
    )


def _mtimes(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (out / "levels").glob("*.json")}


def test_compression_study_runs_then_resumes_without_recomputing(study, tmp_path, monkeypatch, capsys):
    from disel.experiments.models import recorded_path
    from disel.experiments.study import stages
    from disel.experiments.study.compression import CompressionConfig, load_compression_results
    from disel.io import read_json
    from paper_figs import evidence_compression

    out = tmp_path / "out"
    assert main(study, out) == 0
    results = load_compression_results(out / "compression.json")
    reference = results.reference
    assert results.total_components == RANK * len(LLAMA_TARGET_MODULES) * 2  # two layers
    by_key = {(r.operation, r.level): r for r in results.levels}
    operations = {op for op, _ in by_key}
    assert operations == {"prune", "prune_aligned", "merge_static"}
    for unchanged in (by_key["prune", 0.0], by_key["merge_static", 0.0]):  # removing nothing reproduces it exactly
        assert (unchanged.correct, unchanged.perplexity, unchanged.kl) == (
            reference.correct,
            reference.perplexity,
            reference.kl,
        )
        assert unchanged.fraction_reduced == 0.0 and unchanged.acceptable
    half = by_key["prune", 0.5]
    assert half.fraction_reduced == 0.5 and half.adapter_parameters < reference.adapter_parameters
    assert half.kl != reference.kl and half.output_change_rms > 0
    aligned = by_key["prune_aligned", 0.0]  # alignment of identical gates is exact up to float rounding
    assert aligned.kl["english"] == pytest.approx(reference.kl["english"], rel=1e-3, abs=1e-7)
    assert by_key["prune_aligned", 0.5].kl != half.kl  # pruning in the aligned basis removes other directions
    folded = by_key["merge_static", 1e-6]  # exactly the constant gates: the output does not move
    assert folded.fraction_reduced == pytest.approx(1 / RANK)
    assert folded.kl["english"] == pytest.approx(reference.kl["english"], rel=1e-3, abs=1e-7)
    assert results.criterion["kl_tolerance"] == CompressionConfig.model_fields["kl_tolerance"].default
    assert results.best["prune"] == max(
        r.fraction_reduced for r in results.levels if r.operation == "prune" and r.acceptable
    )
    assert {"disel", "lora", "base"} <= set(results.timing["median_s"]) and results.timing["ratios"]
    for written in ("compression.json", "timing.json"):  # the inputs were given as absolute paths
        assert absolute_paths(read_json(out / written)) == [], written
    assert Path(recorded_path(results.adapter)) == Path(study["adapter"])
    assert evidence_compression.main(["--results", str(out / "compression.json"), "--out", str(out)]) == 0
    assert (out / "evidence_compression.png").is_file()
    table = (out / "compression.md").read_text()
    assert "| prune | 0.5 | 0.500 |" in table and "largest acceptable reduction overall: " in table

    # Resume after losing one level and the results: only that level is evaluated again.
    before = _mtimes(out)
    (out / "levels" / "prune-0.5.json").unlink()
    (out / "compression.json").unlink()
    calls = []
    evaluate = stages.evaluate_model
    monkeypatch.setattr(stages, "evaluate_model", lambda *a, **k: calls.append(a) or evaluate(*a, **k))
    assert main(study, out) == 0
    assert len(calls) == 1
    after = _mtimes(out)
    assert {k: v for k, v in after.items() if k != "prune-0.5.json"} == {
        k: v for k, v in before.items() if k != "prune-0.5.json"
    }
    again = load_compression_results(out / "compression.json")
    assert {(r.operation, r.level): r.kl for r in again.levels} == {k: r.kl for k, r in by_key.items()}

    # Cached steps made with other settings are refused, not mixed in.
    assert main(study, out, "stats_texts=3") == 2
    assert "holds steps made with other settings" in capsys.readouterr().err


@pytest.mark.parametrize(
    "override, message",
    [
        ("adapter=/no/such/adapter", "adapter '/no/such/adapter' is not a saved adapter folder"),
        ("evidence_dir=/no/such/evidence", "evidence_dir '/no/such/evidence' holds no data/manifest.json"),
        ("fractions=[1.0]", "fractions.0"),
        ("stats_texts=0", "stats_texts"),
    ],
)
def test_bad_inputs_give_one_line_errors(study, tmp_path, capsys, override, message):
    assert main(study, tmp_path / "out", override) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_evidence_dir_without_results_needs_a_recipe(study, tmp_path, capsys):
    assert main({k: v for k, v in study.items() if k != "evidence_recipe"}, tmp_path / "out") == 2
    assert "has no results.json to read the recipe from" in capsys.readouterr().err


def test_the_figure_script_refuses_a_missing_or_other_version_results_file(tmp_path, capsys):
    from paper_figs import evidence_compression

    assert evidence_compression.main(["--results", str(tmp_path / "none.json"), "--out", str(tmp_path)]) == 2
    assert "none.json" in capsys.readouterr().err
    (tmp_path / "future.json").write_text('{"schema_version": 99}')
    assert evidence_compression.main(["--results", str(tmp_path / "future.json"), "--out", str(tmp_path)]) == 2
    assert "found schema 'disel.evidence_compression/99'" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.png"))


def test_recipe_evidence_record_and_lora_come_from_the_evidence_results(study, tmp_path, monkeypatch):
    """A finished evidence folder (results.json): no --recipe or --lora-adapter needed; the evidence run's own
    final evaluation of the adapter is kept for comparison and the LoRA adapter of the same seed is timed. The
    recipe's paths are recorded relative to the checkout (as ``build_results`` records them) and read back from
    another working directory."""
    import shutil

    import numpy as np

    from disel.experiments.models import portable_paths
    from disel.experiments.study.compression import load_compression_results
    from disel.experiments.study.config import load_study_config
    from disel.experiments.study.results import (
        CheckpointRecord,
        EvidenceResults,
        Interval,
        RunRecord,
        save_results,
    )

    evidence = tmp_path / "evidence"
    shutil.copytree(study["evidence_dir"], evidence)
    config = load_study_config(RECIPE, study["evidence_overrides"])
    final = CheckpointRecord(
        step=7,
        exact_match=Interval(0.5, 0.2, 0.8),
        perplexity={"english": 9.0, "code": 8.0},
        kl={"english": 0.25, "code": 0.5},
    )
    run = RunRecord("disel_paper", 0, [final], np.ones((1, 6), dtype=bool))
    recipe = portable_paths({"evidence": config.model_dump(mode="json")})  # as build_results records it
    save_results(EvidenceResults("tiny", "arithmetic", 6, [run], recipe=recipe), evidence / "results.json")
    monkeypatch.chdir(tmp_path)  # not the checkout: the recorded relative paths are the checkout's
    recipe = {"kind": "compression", "evidence_dir": str(evidence), "adapter": study["adapter"], "out": "unused"}
    settings = {"operations": ["prune"], "fractions": [0], "stats_texts": 2, "timing_repetitions": 1}
    assert main({**recipe, **settings, "timing_tokens": 8}, tmp_path / "out") == 0
    results = load_compression_results(tmp_path / "out" / "compression.json")
    assert results.evidence_final["step"] == 7 and results.evidence_final["kl"]["code"] == 0.5
    assert results.timing["lora_adapter"].endswith("lora-seed0") and "lora" in results.timing["median_s"]
    assert "evidence run's own evaluation of this adapter (step 7)" in (tmp_path / "out" / "compression.md").read_text()

"""The evidence results file (disel.experiments.study.results): round trip, validation, atomic writes."""

import json
import math

import numpy as np
import pytest

from disel.experiments.study.results import (
    SCHEMA_VERSION,
    CheckpointRecord,
    EvidenceResults,
    Interval,
    MatchedComparison,
    RunRecord,
    compare_arms,
    load_results,
    save_results,
)
from disel.experiments.study.stats import choose_levels, matched_differences


def _run(arm, seed, problems=20, disel=False, rng=None):
    rng = rng or np.random.default_rng(seed)
    steps = [0, 10, 20, 30]
    difficulty = rng.uniform(size=problems)
    correct = difficulty[None, :] < np.array([0.0, 0.2, 0.4, 0.6])[:, None]
    checkpoints = [
        CheckpointRecord(
            step=s,
            exact_match=Interval(float(correct[k].mean()), 0.0, 1.0),
            perplexity={"english": 10.0 + k, "code": 5.0 + k},
            kl={"english": 0.01 * k + (0.0 if disel else 0.005 * k), "code": 0.02 * k},
            anti_aligned_fraction=0.1 * k if disel else None,
            anti_aligned_by_layer={0: 0.0, 29: 0.25} if disel else None,
            gate_means={"math": 0.3, "english": math.nan, "code": 0.1} if disel else None,
        )
        for k, s in enumerate(steps)
    ]
    return RunRecord(
        arm=arm,
        seed=seed,
        checkpoints=checkpoints,
        correct=correct,
        adapter=f"adapters/{arm}-{seed}",
        timing={"train_seconds": 12.5},
    )


def _results():
    runs = [_run("lora", 0), _run("lora", 1), _run("disel_paper", 0, disel=True), _run("disel_paper", 1, disel=True)]
    lora = [r.path("kl", "english") for r in runs[:2]]
    dis = [r.path("kl", "english") for r in runs[2:]]
    diffs = matched_differences(dis, lora, choose_levels([*dis, *lora]), np.random.default_rng(0), replicates=200)
    comparison = MatchedComparison("disel_paper", "lora", "kl", "english", diffs)
    return EvidenceResults(
        model="SmolLM2-135M-Instruct",
        task="arithmetic",
        n_test_problems=20,
        runs=runs,
        comparisons=[comparison],
        base=runs[0].checkpoints[0],
        throughput={"matmul_gflops": 40.0},
        recipe={"r": 8},
    )


def test_round_trip_through_a_file_keeps_everything(tmp_path):
    """save → load gives the same dictionary (NaN survives as null → NaN); seeds per arm are derived."""
    results = _results()
    path = save_results(results, tmp_path / "sub" / "results.json")
    loaded = load_results(path)
    assert json.dumps(loaded.to_dict(), default=str) == json.dumps(results.to_dict(), default=str)
    assert loaded.seeds == {"lora": [0, 1], "disel_paper": [0, 1]}
    np.testing.assert_array_equal(loaded.runs[2].correct, results.runs[2].correct)
    assert loaded.runs[2].checkpoints[1].anti_aligned_by_layer == {0: 0.0, 29: 0.25}
    assert math.isnan(loaded.runs[2].checkpoints[0].gate_means["english"])
    raw = json.loads(path.read_text())  # strict JSON: no NaN tokens
    assert raw["runs"][2]["checkpoints"][0]["gate_means"]["english"] is None
    assert raw["schema"] == SCHEMA_VERSION
    assert loaded.comparisons[0].differences == results.comparisons[0].differences
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]  # no temporary file left


def test_matched_comparison_from_the_stored_paths():
    """The stored runs rebuild the paths: DISeL's English KL is lower by 0.005 per checkpoint index, so the
    matched difference is negative."""
    results = _results()
    assert all(d.difference < 0 for d in results.comparisons[0].differences)


def test_other_schema_versions_are_refused(tmp_path):
    path = save_results(_results(), tmp_path / "r.json")
    data = json.loads(path.read_text())
    data["schema"] = "disel.evidence/99"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="disel.evidence/99"):
        load_results(path)


def test_inconsistent_records_are_refused():
    run = _run("lora", 0)
    with pytest.raises(ValueError, match="one row per checkpoint"):
        RunRecord(arm="lora", seed=0, checkpoints=run.checkpoints, correct=run.correct[:2])
    with pytest.raises(ValueError, match="strictly increasing"):
        RunRecord(arm="lora", seed=0, checkpoints=run.checkpoints[::-1], correct=run.correct)
    with pytest.raises(ValueError, match="two runs of arm"):
        EvidenceResults(model="m", task="t", n_test_problems=20, runs=[run, run])
    with pytest.raises(ValueError, match="n_test_problems is 30"):
        EvidenceResults(model="m", task="t", n_test_problems=30, runs=[run])
    with pytest.raises(ValueError, match="no kl for domain 'german'"):
        run.path("kl", "german")


def test_compare_arms_equals_the_direct_statistics():
    """compare_arms is matched_differences on the stored paths at choose_levels' levels (same generator seed)."""
    results = _results()
    direct = results.comparisons[0]
    via = compare_arms(results.runs, "disel_paper", "lora", "kl", "english", np.random.default_rng(0), replicates=200)
    assert via == direct
    with pytest.raises(ValueError, match="arms present"):
        compare_arms(results.runs, "dora", "lora", "kl", "english", np.random.default_rng(0))


def test_intermediate_records_are_typed_and_files_from_before_the_types_still_read(tmp_path):
    """A checkpoint record written before the records had a schema key reads (a study resumes from it); a
    mistyped value fails naming the file and the key; a record written now carries its schema."""
    import json

    from disel.experiments.schemas import MalformedResultFileError
    from disel.experiments.study.records import CheckpointEval

    raw = {
        "correct": [1, 0],
        "exact_match": 0.5,
        "perplexity": {"english": 3.0, "code": 2.0},
        "kl": {"english": 0.1, "code": 0.2},
        "generation_s": 1.0,
        "longest_response_chars": 12,
        "seconds": 2.0,
        "step": 20,
    }
    old = tmp_path / "step-20.json"
    old.write_text(json.dumps(raw))
    record = CheckpointEval.read(old)
    assert (record.step, record.correct, record.kl["code"]) == (20, [1, 0], 0.2)
    record.write(tmp_path / "again.json")
    assert json.loads((tmp_path / "again.json").read_text())["schema"] == "disel.study.eval/1"
    (tmp_path / "bad.json").write_text(json.dumps({**raw, "exact_match": "half"}))
    with pytest.raises(MalformedResultFileError, match=r"bad.json: 'exact_match'"):
        CheckpointEval.read(tmp_path / "bad.json")


def test_run_all_redraws_the_committed_evidence_figures_from_the_committed_results(tmp_path):
    """``python -m paper_figs.run_all --evidence ... --compression ...`` draws the committed evidence and
    compression figures again, byte for byte, from the committed results files (the runner draws none)."""
    from pathlib import Path

    from paper_figs import run_all

    committed = Path(__file__).resolve().parents[1] / "paper_figs" / "evidence"
    argv = [
        "--evidence",
        str(committed / "results.json"),
        "--compression",
        str(committed / "compression" / "compression.json"),
    ]
    assert run_all.main([*argv, "--only", "evidence", "compression", "--out", str(tmp_path)]) == 0
    for drawn, kept in (
        ("evidence_tradeoff_kl.png", "evidence_tradeoff_kl.png"),
        ("evidence_accuracy.png", "evidence_accuracy.png"),
        ("evidence_compression.png", "compression/evidence_compression.png"),
    ):
        assert (tmp_path / drawn).read_bytes() == (committed / kept).read_bytes(), drawn

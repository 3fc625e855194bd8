"""The typed result files of disel.experiments.schemas: write/read round trips, refused schema versions,
refused values (written nothing), and older versions that still read."""

from __future__ import annotations

import dataclasses
import json

import pytest

from disel.experiments.schemas import (
    Gsm8kResult,
    HumanEvalResult,
    LmEvalResult,
    MalformedResultFileError,
    MlmPerplexityResult,
    PerplexityResult,
    RetentionRow,
    RetentionTable,
    TrainResult,
    write_record,
)

_CORPORA = {"english": {"perplexity": 12.5, "nll": 2.53, "tokens": 400, "texts": 4}}


def _examples(tmp_path):
    """One instance of each result class that has no figure-side test of its own."""
    return [
        Gsm8kResult(
            0.5,
            0.75,
            4,
            1,
            {"max_new_tokens": 8},
            1.5,
            samples=[{"index": 0, "correct": True}],
            model={"base": "tiny"},
            data="test.jsonl",
        ),
        HumanEvalResult(0.25, 4, {"max_new_tokens": 8}, samples=[{"task_id": "t/0", "status": "passed"}]),
        PerplexityResult({"base": "tiny"}, _CORPORA, 12.5),
        MlmPerplexityResult({"base": "tiny"}, _CORPORA, 12.5, pretrained_mlm="roberta"),
        LmEvalResult(
            {"base": "tiny"},
            {"tasks": ["hellaswag"]},
            "0.4.9",
            {"hellaswag": {"metric": "acc_norm,none", "value": 0.4, "n_samples": 10}},
            0.4,
            3.0,
        ),
        RetentionTable(
            tmp_path / "retention_x.json",
            "perplexity",
            ("english",),
            (
                RetentionRow(5, "checkpoint-5", {"english": 13.0, "mean": 13.0}),
                RetentionRow(0, "base", {"english": 12.0, "mean": 12.0}),
            ),
        ),
    ]


@pytest.mark.parametrize("index", range(6))
def test_result_file_round_trip(tmp_path, index):
    """write then read gives the same object; the file carries the class's schema version."""
    original = _examples(tmp_path)[index]
    path = tmp_path / "result.json"
    original.write(path)
    assert json.loads(path.read_text())["schema"] == type(original).SCHEMA
    again = type(original).read(path)
    if hasattr(original, "path"):
        assert again.path == path
    assert again == original


@pytest.mark.parametrize("index", range(6))
def test_result_file_refuses_another_version_naming_the_expected_one(tmp_path, index):
    """A file of an unknown version of the same schema is refused naming the version this code reads."""
    original = _examples(tmp_path)[index]
    path = original.write(tmp_path / "result.json")
    raw = json.loads(path.read_text())
    family = type(original).SCHEMA.rsplit("/", 1)[0]
    raw["schema"] = f"{family}/99"
    path.write_text(json.dumps(raw))
    expected = f"expected schema '{type(original).SCHEMA}'.*found schema '{family}/99'"
    with pytest.raises(MalformedResultFileError, match=expected) as info:
        type(original).read(path)
    assert str(info.value).startswith(str(path))


def test_result_file_names_a_mistyped_key_and_writes_nothing(tmp_path):
    """A string for a number, or a NaN, is refused before writing, naming the key's location."""
    path = tmp_path / "gsm8k.json"
    with pytest.raises(MalformedResultFileError, match=r"'n': input should be a valid integer, got '4'"):
        Gsm8kResult(0.5, 0.5, "4", 0, {}, 1.0).write(path)
    with pytest.raises(MalformedResultFileError, match="'mean_perplexity'"):
        PerplexityResult({}, _CORPORA, float("nan")).write(path)
    with pytest.raises(MalformedResultFileError, match=r"missing key 'corpora'"):
        PerplexityResult.from_dict({"schema": "disel.perplexity/1", "model": {}, "mean_perplexity": 1.0}, path)
    assert not path.exists()


def test_write_record_picks_the_class_by_schema(tmp_path):
    """An evaluator's record dict is checked by its own class; an unknown schema is refused naming the known ones."""
    record = HumanEvalResult(0.5, 2, {}).to_dict()
    assert list(record)[:3] == ["schema", "metric", "pass@1"]
    path = write_record(tmp_path / "he.json", record)
    assert HumanEvalResult.read(path).pass_at_1 == 0.5
    bad = {**record, "pass@1": "high"}
    with pytest.raises(MalformedResultFileError, match=r"'pass@1'"):
        write_record(tmp_path / "bad.json", bad)
    with pytest.raises(ValueError, match="record schema must be one of"):
        write_record(tmp_path / "bad.json", {"schema": "disel.unknown/1"})
    assert not (tmp_path / "bad.json").exists()


def test_older_train_result_version_still_reads(tmp_path):
    """A disel.train_result/1 file (with the dropped adapter_dir) reads as the current version."""
    fields = dict(
        name="r",
        method="lora",
        rank=2,
        task_type="causal_lm",
        model_path="m",
        config={"training": {"seed": 0}},
        output_dir=str(tmp_path),
        world_size=1,
        global_step=3,
        epoch=1.0,
        final_train_loss=float("nan"),
        train_loss=0.5,
        eval={},
        loss_history=[[1, 0.7]],
        eval_history=[],
        log_history=[],
        checkpoints=[],
        resumed_from=None,
        runtime_s=2.0,
        data={"train_rows": 4},
        parameters={"trainable": 1, "total": 2},
        parameter_sha256_per_rank=["ab"],
        versions={"torch": "2"},
        finished_at="2026-01-01T00:00:00+00:00",
    )
    current = TrainResult(**fields)
    current.write(tmp_path / "train_result.json")
    assert TrainResult.read(tmp_path).final_train_loss is None  # NaN written as null
    old = {**current.to_dict(), "schema": "disel.train_result/1", "adapter_dir": str(tmp_path)}
    (tmp_path / "train_result.json").write_text(json.dumps(old))
    read = TrainResult.read(tmp_path)
    assert read.schema == "disel.train_result/2" and read.global_step == 3 and not hasattr(read, "adapter_dir")


def test_every_result_file_says_its_version_under_one_key(tmp_path):
    """The evidence files said ``schema_version`` (an integer) where every other file says ``schema``; now each
    writes ``schema``, and the committed version-1 evidence files still read (as ``<name>/1``)."""
    from pathlib import Path

    from disel.experiments.study.results import CompressionResults, EvidenceResults

    committed = Path(__file__).resolve().parents[1] / "paper_figs" / "evidence"
    files = {
        EvidenceResults: committed / "results.json",
        CompressionResults: committed / "compression" / "compression.json",
    }
    for cls, path in files.items():
        assert json.loads(path.read_text())["schema_version"] == 1  # a version-1 file: the test can fail
        raw = cls.read(path).to_dict()
        assert raw["schema"] == cls.SCHEMA and cls.SCHEMA.endswith("/2") and "schema_version" not in raw
        written = cls.read(path).write(tmp_path / path.name)
        assert cls.read(written).to_dict() == raw
    for example in _examples(tmp_path):
        assert "schema" in example.to_dict() and "schema_version" not in example.to_dict()


def test_study_reads_train_result_through_its_class(tmp_path):
    """The study read ``train_result.json`` as raw JSON (a missing key was a bare KeyError); it now reads the
    typed :class:`TrainResult`, which names the file and the key, and takes the Trainer's runtime from it."""
    from types import SimpleNamespace

    import numpy as np

    from disel.experiments.study.aggregate import _run_record

    run = tmp_path / "run"
    run.mkdir()
    (run / "train_result.json").write_text(json.dumps({"schema": "disel.train_result/2", "method": "lora"}))
    spec = SimpleNamespace(run_dir=run, source_dir=run, arm="lora", seed=0)
    base = {"correct": [1, 0], "perplexity": {"english": 2.0}, "kl": {"english": 0.0}}
    with pytest.raises(MalformedResultFileError, match="train_result.json"):
        _run_record(spec, base, np.random.default_rng(0), 10, None)


def test_trainer_runtime_is_the_last_logged_train_runtime():
    log = [{"loss": 1.0, "step": 1}, {"train_runtime": 3.5}, {"loss": 0.5}, {"train_runtime": 7.25}, {"step": 9}]
    fields = {f.name: None for f in dataclasses.fields(TrainResult) if f.name not in ("schema", "path")}
    result = TrainResult(**{**fields, "log_history": log, "config": {}})
    assert result.trainer_runtime_s == 7.25
    assert dataclasses.replace(result, log_history=log[:1]).trainer_runtime_s is None

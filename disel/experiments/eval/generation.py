"""Target-task evaluation: generate greedily in batches, GSM8K-style exact match and
HumanEval-style pass@1 (generated code runs only when asked, in an isolated interpreter with a timeout and limits).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import PositiveInt
from pydantic.dataclasses import dataclass as checked_dataclass

from ..data.templates import DEFAULT_TEMPLATE, get_template
from ..schemas import Gsm8kResult, HumanEvalResult
from .progress import progress_bar

# lm-eval's gsm8k "strict-match" filter (lm_eval/tasks/gsm8k/gsm8k.yaml): the first "#### <number>".
_GSM8K_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
# MetaMathQA responses end with "The answer is: <number>" instead; lm-eval's gsm8k-cot strict-match
# reads "The answer is <number>". Both spellings count as a strict final answer.
_ANSWER_IS_STRICT = re.compile(r"The answer is:? (\-?[0-9\.\,]+)")
# lm-eval's gsm8k "flexible-extract" filter: the LAST number-like token anywhere (group_select -1).
_FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")


def _normalise_number(text: str) -> str:
    """lm-eval's gsm8k exact_match normalisation (``regexes_to_ignore``): no commas, dollar signs or trailing dot."""
    return re.sub(r"\.$", "", text.replace(",", "").replace("$", "")).strip()


def extract_final_number(text: str, strict: bool = True) -> str | None:
    """The final numeric answer in a model response, normalised as lm-eval's gsm8k exact match does.

    ``strict=True`` (lm-eval filter ``strict-match``): the number after the first ``"#### "`` or, if there is
    none, after the first ``"The answer is"`` / ``"The answer is:"``; ``None`` if neither marker is followed by a
    number. ``strict=False`` (``flexible-extract``): the last number anywhere. Normalisation removes ``,`` and
    ``$`` and one trailing ``.`` (``"#### 1,234."`` → ``"1234"``); as in lm-eval, ``"18.0"`` does not match ``"18"``.
    """
    if strict:
        match = _GSM8K_STRICT.search(text) or _ANSWER_IS_STRICT.search(text)
        number = match.group(1) if match else ""
    else:
        numbers = _FLEXIBLE.findall(text)  # (group 1, group 2) per match: the one that matched, and ""
        number = "".join(numbers[-1]) if numbers else ""
    normalised = _normalise_number(number)  # "" (no number) has no digit: None
    return normalised if re.search(r"[0-9]", normalised) else None


def gsm8k_reference_answer(row: dict[str, Any]) -> str:
    """The reference answer of a GSM8K-style row, normalised like predictions: GSM8K's ``answer`` is the worked
    solution ending ``#### <n>``, the offline arithmetic problems' (:mod:`~disel.experiments.data.arithmetic`)
    a bare number."""
    answer = row.get("answer")
    if answer is None:
        raise KeyError(f"a GSM8K row needs an 'answer' field, got fields {sorted(row)}")
    answer = str(answer)
    reference = extract_final_number(answer, strict=True) or _normalise_number(answer)
    if not re.fullmatch(r"-?[0-9.]+", reference):
        raise ValueError(f"answer {answer!r} is neither a number nor a GSM8K solution ending '#### <number>'")
    return reference


def _question_of(row: dict[str, Any]) -> str:
    for key in ("question", "instruction", "query"):
        if key in row:
            return str(row[key])
    raise KeyError(f"a GSM8K row needs a 'question' (or 'instruction') field, got fields {sorted(row)}")


@checked_dataclass
class GenerationSettings:
    """Greedy decoding settings shared by the generation-based evaluations.

    ``batch_size``: prompts per ``generate`` call (sorted by length first, so a batch has little padding).
    ``stop_strings``: a response is cut before the first of these, and a row stops generating once one appears
    (a model that keeps going writes a new ``### Instruction:``); None: the prompt template's own.
    """

    max_new_tokens: PositiveInt = 512
    batch_size: PositiveInt = 8
    stop_strings: tuple[str, ...] | None = None

    def for_template(self, template: str) -> GenerationSettings:
        """These settings with the stop strings of ``template`` filled in (when not set explicitly)."""
        stops = self.stop_strings if self.stop_strings is not None else get_template(template).stop_strings
        return GenerationSettings(self.max_new_tokens, self.batch_size, stops)


@torch.no_grad()
def generate_responses(
    model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str], settings: GenerationSettings | None = None
) -> list[str]:
    """Greedy continuations of ``prompts`` (in order), decoded without special tokens, cut at stop strings.

    Batches are left-padded whatever ``tokenizer.padding_side`` is, so each prompt's last token is at the end
    of its row and generation continues it directly. Without ``settings.stop_strings`` a response runs to
    ``max_new_tokens`` (:meth:`GenerationSettings.for_template` sets a template's).
    """
    settings = settings or GenerationSettings()
    if tokenizer.pad_token_id is None:
        raise ValueError("tokenizer has no pad token; set tokenizer.pad_token (e.g. to eos) before generating")
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    responses = [""] * len(prompts)
    greedy = dict(max_new_tokens=settings.max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    if settings.stop_strings:
        greedy.update(stop_strings=list(settings.stop_strings), tokenizer=tokenizer)
    for start in progress_bar(range(0, len(order), settings.batch_size), "generating"):
        batch_ids = order[start : start + settings.batch_size]
        encoded = tokenizer([prompts[i] for i in batch_ids], return_tensors="pt", padding=True, padding_side="left")
        encoded = {k: v.to(device) for k, v in encoded.items() if k in ("input_ids", "attention_mask")}
        output = model.generate(**encoded, **greedy)  # (batch, prompt_len + new)
        new_tokens = output[:, encoded["input_ids"].shape[1] :]  # (batch, new)
        # generate stops a row once a stop string appears, but keeps it in the output: cut the text before it
        for index, text in zip(batch_ids, tokenizer.batch_decode(new_tokens, skip_special_tokens=True)):
            cuts = [text.find(stop) for stop in settings.stop_strings or () if stop in text]
            responses[index] = text[: min(cuts, default=len(text))]
    return responses


def evaluate_gsm8k(
    model: torch.nn.Module,
    tokenizer: Any,
    rows: Sequence[dict[str, Any]],
    *,
    settings: GenerationSettings | None = None,
    template: str = DEFAULT_TEMPLATE,
    format_prompt: Callable[[str], str] | None = None,
) -> dict[str, Any]:
    """GSM8K-style exact match (zero-shot, greedy) of ``model`` on ``rows``.

    Each row has a question (``question`` or ``instruction``) and an ``answer`` (GSM8K's worked solution ending
    ``#### n``, or a bare number). The prompt is the question in ``template``, the one the model was trained with
    (:func:`~disel.experiments.eval.evaluators.training_template` reads it from a run; ``format_prompt(question)``
    replaces it). Returns the ``disel.gsm8k/1`` record
    (:class:`~disel.experiments.schemas.Gsm8kResult`; the command line adds ``model`` and ``data``).
    """
    if len(rows) == 0:
        raise ValueError("rows is empty: nothing to evaluate")
    questions = [_question_of(row) for row in rows]
    references = [gsm8k_reference_answer(row) for row in rows]
    settings = (settings or GenerationSettings()).for_template(template)
    format_prompt = format_prompt or get_template(template).format_prompt
    started = time.perf_counter()
    responses = generate_responses(model, tokenizer, [format_prompt(question) for question in questions], settings)
    seconds = time.perf_counter() - started
    strict = [extract_final_number(r, strict=True) for r in responses]
    flexible = [extract_final_number(r, strict=False) for r in responses]
    strict_correct = [p == ref for p, ref in zip(strict, references)]  # a reference is never None
    columns = zip(questions, references, responses, strict, flexible, strict_correct)
    samples = [
        dict(index=i, question=q, reference=ref, response=r, prediction_strict=s, prediction_flexible=f, correct=c)
        for i, (q, ref, r, s, f, c) in enumerate(columns)
    ]
    return Gsm8kResult(
        exact_match=sum(strict_correct) / len(rows),
        exact_match_flexible=sum(p == ref for p, ref in zip(flexible, references)) / len(rows),
        n=len(rows),
        n_no_strict_answer=sum(p is None for p in strict),
        generation=asdict(settings),
        seconds=seconds,
        samples=samples,
    ).to_dict()


_EXECUTION_REFUSAL = (
    "check_program runs model-generated code. Pass allow_code_execution=True to confirm you accept that "
    "(it runs in a separate isolated Python process with a timeout, memory/CPU/file-size limits and a "
    "scratch working directory, which limits accidents but is not a security sandbox)"
)

# Runs inside the child interpreter: apply the limits, then execute the program file as __main__.
# Limits go here rather than in a preexec_fn because preexec_fn is unsafe in a parent that has
# threads (torch always has), and a child that limits itself needs no cooperation from the parent.
# Its arguments: the program file, then the address space (bytes), CPU time (s) and file size (bytes); no core dumps.
_CHILD_BOOTSTRAP = """
import contextlib
import resource
import runpy
import sys
limits = (resource.RLIMIT_AS, resource.RLIMIT_CPU, resource.RLIMIT_FSIZE, resource.RLIMIT_CORE)
for limit, value in zip(limits, [*map(int, sys.argv[2:5]), 0]):
    hard = resource.getrlimit(limit)[1]
    value = value if hard == resource.RLIM_INFINITY else min(value, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(limit, (value, hard))
sys.argv = sys.argv[1:2]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@dataclass(frozen=True)
class ExecutionResult:
    """One program run: ``status`` is ``"passed"`` (exit 0), ``"failed"`` (non-zero exit, e.g. a failing ``assert``)
    or ``"timeout"`` (killed after ``timeout_s``); ``detail`` is the tail of stderr."""

    status: str
    returncode: int | None
    detail: str
    seconds: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def check_program(program: str, *, timeout_s: float = 10.0, allow_code_execution: bool = False) -> ExecutionResult:
    """Run ``program`` in a fresh, isolated Python process and report whether it exits cleanly.

    Refuses (``PermissionError``) unless ``allow_code_execution=True``. The child is ``sys.executable -I``
    (isolated mode: no user site-packages, no ``PYTHON*`` variables, no current directory on ``sys.path``) in its
    own session, in a temporary working directory deleted afterwards, with address space, CPU time and written-file
    size limited (``resource``, POSIX only: 1 GiB, ``timeout_s`` + 1 s, 16 MiB) and no stdin. After ``timeout_s``
    seconds its process group is killed.
    """
    if allow_code_execution is not True:
        raise PermissionError(_EXECUTION_REFUSAL)
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got timeout_s={timeout_s!r}")
    with tempfile.TemporaryDirectory(prefix="disel-exec-") as scratch:
        program_path = Path(scratch) / "program.py"
        program_path.write_text(program, encoding="utf-8")
        limits = (2**30, int(timeout_s) + 1, 16 * 2**20)  # address space bytes, CPU seconds, file bytes
        command = [sys.executable, "-I", "-c", _CHILD_BOOTSTRAP, str(program_path), *map(str, limits)]
        environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "HOME": scratch}
        started = time.perf_counter()
        pipes = dict(stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        process = subprocess.Popen(command, cwd=scratch, env=environment, start_new_session=True, **pipes)
        try:
            _, stderr = process.communicate(timeout=timeout_s)
            status = "passed" if process.returncode == 0 else "failed"
        except subprocess.TimeoutExpired:
            # The child leads its own session: killing its group also ends what the program forked. The group
            # exists here: the child, even if it has just exited, is not reaped until communicate() below.
            os.killpg(process.pid, signal.SIGKILL)
            _, stderr = process.communicate()
            status = "timeout"
        seconds = time.perf_counter() - started
    return ExecutionResult(status, process.returncode, stderr.decode("utf-8", errors="replace")[-2000:], seconds)


@dataclass(frozen=True)
class CodeProblem:
    """A HumanEval-style problem: ``prompt`` (signature + docstring), ``test`` (defines ``check``),
    ``entry_point`` (the function ``check`` receives)."""

    task_id: str
    prompt: str
    test: str
    entry_point: str

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "CodeProblem":
        missing = [k for k in ("task_id", "prompt", "test", "entry_point") if k not in row]
        if missing:
            raise KeyError(f"a HumanEval row needs fields task_id, prompt, test, entry_point; missing {missing}")
        return cls(str(row["task_id"]), row["prompt"], row["test"], row["entry_point"])


_CODE_BLOCK = re.compile(r"```(?:python|py)?[^\n]*\n(.*?)(?:```|$)", re.DOTALL)


def extract_code_completion(problem: CodeProblem, response: str) -> str:
    """The program text to test from a model response: the first fenced code block after the prompt if it defines
    ``entry_point`` (instruction-tuned models answer so; the prompt's imports stay available and the new definition
    replaces the stub), else the prompt continued by the response (as base models write it)."""
    block = _CODE_BLOCK.search(response)
    if block is not None and re.search(rf"def\s+{re.escape(problem.entry_point)}\s*\(", block.group(1)):
        return problem.prompt + "\n    pass\n\n" + block.group(1)
    return problem.prompt + response


def humaneval_program(problem: CodeProblem, completion: str) -> str:
    """The complete test program: the completed code, the problem's ``check`` and its call."""
    return f"{completion}\n\n{problem.test}\n\ncheck({problem.entry_point})\n"


def evaluate_humaneval(
    model: torch.nn.Module,
    tokenizer: Any,
    problems: Sequence[CodeProblem | dict[str, Any]],
    *,
    allow_code_execution: bool = False,
    settings: GenerationSettings | None = None,
    template: str = "magicoder",
    format_prompt: Callable[[CodeProblem], str] | None = None,
    timeout_s: float = 10.0,
) -> dict[str, Any]:
    """HumanEval-style pass@1 with one greedy sample per problem (the paper's setting).

    Refuses before generating anything unless ``allow_code_execution=True`` (see :func:`check_program`). The
    prompt asks to complete the function in ``template``, by default the Magicoder template the code runs were
    trained with (``format_prompt(problem)`` replaces it). Returns the ``disel.humaneval/1`` record
    (:class:`~disel.experiments.schemas.HumanEvalResult`).
    """
    if allow_code_execution is not True:
        raise PermissionError(_EXECUTION_REFUSAL)
    problems = [p if isinstance(p, CodeProblem) else CodeProblem.from_row(p) for p in problems]
    if not problems:
        raise ValueError("problems is empty: nothing to evaluate")
    settings = (settings or GenerationSettings()).for_template(template)
    ask = "Complete the following Python function.\n```python\n{}```"
    format_prompt = format_prompt or (lambda problem: get_template(template).format_prompt(ask.format(problem.prompt)))
    responses = generate_responses(model, tokenizer, [format_prompt(problem) for problem in problems], settings)
    tested = progress_bar(zip(problems, responses), "running tests", total=len(problems), unit="program")
    programs = (humaneval_program(problem, extract_code_completion(problem, response)) for problem, response in tested)
    outcomes = [check_program(program, timeout_s=timeout_s, allow_code_execution=True) for program in programs]
    samples = [
        {"task_id": p.task_id, "response": r, "status": o.status, "detail": o.detail[-500:]}
        for p, r, o in zip(problems, responses, outcomes)
    ]
    pass_at_1 = sum(o.passed for o in outcomes) / len(problems)
    return HumanEvalResult(pass_at_1, len(problems), asdict(settings), samples=samples).to_dict()

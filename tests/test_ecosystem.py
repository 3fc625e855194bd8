"""DISeL where PEFT users work: transformers' own adapter API, loading without ``import disel`` (the
auto-registration hook, in fresh processes, including the ``lm_eval`` command line), the model card, and the
warning when the gates are trained without their optimizer group."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from peft import get_peft_model
from transformers import AutoModelForCausalLM

import disel
import disel._autoregister
from disel import DiselConfig
from disel import optim as disel_optim
from disel._autoregister import ENV_VAR, PTH_NAME
from disel.tuner.card import DISEL_CARD_HEADING, DISEL_TAG

DATA = Path(__file__).with_name("data")


def _ids() -> torch.Tensor:
    return torch.randint(3, 300, (2, 9), generator=torch.Generator().manual_seed(0))


def _config(seed: int = 0, **overrides) -> DiselConfig:
    torch.manual_seed(seed)  # the adapter's random init follows the global seed
    kwargs = dict(r=4, target_modules=["q_proj", "v_proj"], init_weights=False, gate_bias_init=0.0)
    kwargs.update(overrides)
    return DiselConfig(**kwargs)


def _logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


# --- transformers' own adapter API --------------------------------------------------------------------


def test_transformers_adapter_api_with_a_disel_config(tiny_llama_dir, tmp_path):
    """add_adapter, active_adapters, disable/enable_adapters, get_adapter_state_dict, set_adapter,
    delete_adapter, save and load_adapter, and one training step, on a plain transformers model."""
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    ids = _ids()
    base = _logits(model, ids)

    torch.manual_seed(1)
    model.add_adapter(_config(seed=1), adapter_name="first")
    assert model.active_adapters() == ["first"]
    first = _logits(model, ids)
    assert not torch.allclose(first, base, atol=1e-4)  # init_weights=False: a non-trivial update

    model.disable_adapters()
    assert torch.equal(_logits(model, ids), base)
    model.enable_adapters()
    assert torch.equal(_logits(model, ids), first)

    state = model.get_adapter_state_dict("first")
    assert state and all("disel_" in key for key in state)
    assert any("disel_gate" in key for key in state)

    model.add_adapter(_config(seed=2), adapter_name="second")
    model.set_adapter("second")
    assert model.active_adapters() == ["second"]
    second = _logits(model, ids)
    assert not torch.allclose(second, first, atol=1e-4)
    model.delete_adapter("second")
    model.set_adapter("first")
    assert torch.equal(_logits(model, ids), first)
    assert "second" not in model.peft_config

    adapter_dir = tmp_path / "first"
    model.save_pretrained(adapter_dir)  # with adapters attached, saves the adapter only
    assert (adapter_dir / "adapter_config.json").is_file()
    fresh = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    fresh.load_adapter(str(adapter_dir), adapter_name="reloaded")
    fresh.set_adapter("reloaded")
    assert torch.equal(_logits(fresh, ids), first)

    # One training step changes the adapter (gates included) and leaves the base weights alone.
    model.train()
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("disel_" in name for name in trainable), sorted(trainable)[:5]
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(disel.param_groups(model, lr=1e-2))
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed == set(trainable)
    assert any("disel_gate" in name for name in changed)


# --- Model card ----------------------------------------------------------------------------------------


def test_model_card_names_disel_and_carries_the_method_tag(tiny_llama_dir, tmp_path):
    """PEFT's README.md of a saved DISeL adapter gets the ``disel`` tag and says loading needs ``disel``,
    once, also for a second adapter saved in a subdirectory and after saving again."""
    from huggingface_hub import ModelCard

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), _config())
    model.add_adapter("other", _config(seed=3))
    out = tmp_path / "adapter"
    model.save_pretrained(out)
    model.save_pretrained(out)  # saving again must not repeat the note
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "peft"
    assert DISEL_TAG in card.data.tags
    assert "transformers" in card.data.tags  # PEFT's own tags are kept
    assert card.text.count(DISEL_CARD_HEADING) == 1
    assert "needs the `disel` package" in card.text
    assert not (out / "other" / "README.md").exists()  # the second adapter's config found the parent card

    # A config saved on its own (no PEFT card) writes no card.
    alone = tmp_path / "config_only"
    _config().save_pretrained(alone)
    assert not (alone / "README.md").exists()


# --- Warning when the gates have no optimizer group ------------------------------------------------------


@pytest.fixture
def fresh_gate_watch(monkeypatch):
    """disel.optim's once-per-process warning state, reset for one test."""
    import weakref

    if disel_optim._hook_handle is not None:
        disel_optim._hook_handle.remove()
    monkeypatch.setattr(disel_optim, "_hook_handle", None)
    monkeypatch.setattr(disel_optim, "_warned", False)
    monkeypatch.setattr(disel_optim, "_watched_models", weakref.WeakSet())
    monkeypatch.setattr(disel_optim, "_checked_optimizers", weakref.WeakSet())
    yield
    if disel_optim._hook_handle is not None:
        disel_optim._hook_handle.remove()


def _one_step(model, optimizer):
    ids = _ids()
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def test_gate_group_warning_once_for_a_plain_optimizer(tiny_llama_dir, fresh_gate_watch):
    """An optimizer built by disel.param_groups is quiet; a plain AdamW(model.parameters()) over a DISeL
    model warns once (naming the fix), and not again for later optimizers."""
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), _config())
    with warnings.catch_warnings():
        warnings.simplefilter("error", disel_optim.DiselGateGroupWarning)
        _one_step(model, torch.optim.AdamW(disel.param_groups(model, lr=1e-3)))
        # A plain optimizer over a model without DISeL is no concern either.
        plain_base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
        _one_step(plain_base, torch.optim.AdamW(plain_base.parameters(), lr=1e-3))

    with pytest.warns(disel_optim.DiselGateGroupWarning, match="DiselOptimizerMixin") as record:
        _one_step(model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3))
    assert len(record) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", disel_optim.DiselGateGroupWarning)
        _one_step(model, torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3))


def test_has_gate_group_rules():
    """Gates sharing a group with other parameters, or with weight decay, is not a gate group."""
    gate, other = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    gates = {id(gate)}
    assert disel_optim.has_gate_group(
        torch.optim.AdamW([{"params": [gate], "weight_decay": 0.0}, {"params": [other]}]), gates
    )
    assert not disel_optim.has_gate_group(torch.optim.AdamW([gate, other], weight_decay=0.0), gates)
    assert not disel_optim.has_gate_group(torch.optim.AdamW([gate], weight_decay=0.01), gates)
    assert disel_optim.has_gate_group(torch.optim.AdamW([other]), gates)


# --- Loading without `import disel` (fresh processes) -----------------------------------------------------


def _installed_pth() -> Path:
    path = Path(sysconfig.get_paths()["purelib"]) / PTH_NAME
    assert path.is_file(), (
        f"{path} is missing: the auto-registration hook is installed by `pip install -e .` / `pip install .` "
        "(setup.py's build_py); reinstall the package into this environment"
    )
    source = Path(disel._autoregister.__file__).read_text(encoding="utf-8")
    assert repr(source)[1:-1] in path.read_text(encoding="utf-8"), (  # the escaped text, without its quotes
        f"{path} holds an older disel/_autoregister.py: reinstall the package (pip install -e .)"
    )
    return path


def _fresh_env(**extra) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    env.pop(ENV_VAR, None)
    env.update(extra)
    return env


_LOAD_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    torch.set_num_threads(1)
    adapter_dir, base_dir, ids_path, out_dir = sys.argv[1:5]
    assert "disel" not in sys.modules
    from peft import AutoPeftModelForCausalLM, PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM
    report = {"disel_imported_by_peft": "disel" in sys.modules}
    try:
        report["peft_type"] = str(PeftConfig.from_pretrained(adapter_dir).peft_type.value)
    except Exception as error:
        report["error"] = f"{type(error).__name__}: {error}"
        json.dump(report, open(out_dir + "/report.json", "w"))
        sys.exit(0)
    ids = torch.load(ids_path)
    def logits(model):
        with torch.no_grad():
            return model.eval()(ids).logits
    results = {
        "peft_model": logits(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir)),
        "auto_peft": logits(AutoPeftModelForCausalLM.from_pretrained(adapter_dir)),
        "transformers_from_pretrained": logits(AutoModelForCausalLM.from_pretrained(adapter_dir)),
    }
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    base.load_adapter(adapter_dir)
    results["transformers_load_adapter"] = logits(base)
    torch.save(results, out_dir + "/logits.pt")
    json.dump(report, open(out_dir + "/report.json", "w"))
    """
)


@pytest.fixture(scope="module")
def saved_adapter(tiny_llama_dir, tmp_path_factory):
    """A DISeL adapter saved from the tiny model, with the logits it gives."""
    out = tmp_path_factory.mktemp("disel_adapter")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), _config(task_type="CAUSAL_LM")).eval()
    model.save_pretrained(out / "adapter")
    ids = _ids()
    torch.save(ids, out / "ids.pt")
    return out / "adapter", out / "ids.pt", _logits(model, ids)


def _run_load_script(tmp_path, saved_adapter, tiny_llama_dir, **env) -> dict:
    adapter_dir, ids_path, _ = saved_adapter
    script = tmp_path / "load.py"
    script.write_text(_LOAD_SCRIPT)
    completed = subprocess.run(
        [sys.executable, str(script), str(adapter_dir), str(tiny_llama_dir), str(ids_path), str(tmp_path)],
        capture_output=True,
        text=True,
        env=_fresh_env(**env),
        timeout=300,
        cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads((tmp_path / "report.json").read_text())


def test_fresh_process_loads_without_import_disel(tiny_llama_dir, saved_adapter, tmp_path):
    """disel installed but never imported: every PEFT and transformers loader gives the saved logits."""
    _installed_pth()
    report = _run_load_script(tmp_path, saved_adapter, tiny_llama_dir)
    assert report == {"disel_imported_by_peft": True, "peft_type": "DISEL"}
    expected = saved_adapter[2]
    results = torch.load(tmp_path / "logits.pt")
    assert set(results) == {"peft_model", "auto_peft", "transformers_from_pretrained", "transformers_load_adapter"}
    for name, logits in results.items():
        assert torch.equal(logits, expected), name


def test_auto_registration_is_switched_off_by_the_environment(tiny_llama_dir, saved_adapter, tmp_path):
    """DISEL_NO_AUTO_REGISTER=1: peft's import leaves disel alone, and the type is unknown again."""
    _installed_pth()
    report = _run_load_script(tmp_path, saved_adapter, tiny_llama_dir, **{ENV_VAR: "1"})
    assert report["disel_imported_by_peft"] is False
    assert "KeyError" in report["error"] and "DISEL" in report["error"]


def test_hook_costs_nothing_before_peft_and_never_breaks_its_import(tmp_path):
    """Start-up imports nothing heavy; a disel that fails to import turns into a warning, not a failed
    ``import peft``."""
    _installed_pth()
    probe = "import sys; print(sorted(m for m in ('disel', 'torch', 'peft') if m in sys.modules))"
    quiet = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=_fresh_env(), timeout=120, cwd=tmp_path
    )
    assert quiet.returncode == 0 and quiet.stdout.strip() == "[]", quiet.stderr[-2000:]

    # A broken `disel` first on the path (a stand-in package that raises on import).
    broken = tmp_path / "broken"
    (broken / "disel").mkdir(parents=True)
    (broken / "disel" / "__init__.py").write_text("raise RuntimeError('simulated broken disel')\n")
    check = "import warnings; warnings.simplefilter('always'); import peft; print('peft ok', peft.__version__)"
    env = _fresh_env(PYTHONPATH=str(broken))
    completed = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "peft ok" in completed.stdout
    assert "simulated broken disel" in completed.stderr and "import disel" in completed.stderr


def test_lm_eval_command_line_loads_a_disel_adapter(tiny_llama_dir, saved_adapter, tmp_path):
    """``lm_eval --model hf --model_args pretrained=...,peft=ADAPTER`` in a process that never imports disel."""
    pytest.importorskip("lm_eval")
    _installed_pth()
    task_dir = tmp_path / "tasks"
    task_dir.mkdir()
    template = (DATA / "tiny_mc.yaml.template").read_text()
    (task_dir / "tiny_mc.yaml").write_text(template.replace("{DATA_FILE}", str((DATA / "tiny_mc.jsonl").resolve())))
    adapter_dir = saved_adapter[0]
    command = [
        sys.executable,
        "-m",
        "lm_eval",
        "--model",
        "hf",
        "--model_args",
        f"pretrained={tiny_llama_dir},peft={adapter_dir},dtype=float32",
        "--tasks",
        "disel_tiny_mc",
        "--include_path",
        str(task_dir),
        "--device",
        "cpu",
        "--batch_size",
        "4",
        "--output_path",
        str(tmp_path / "results"),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, env=_fresh_env(), timeout=600, cwd=tmp_path)
    assert completed.returncode == 0, (completed.stdout[-2000:], completed.stderr[-4000:])
    result_files = list((tmp_path / "results").rglob("results*.json"))
    assert len(result_files) == 1, result_files
    results = json.loads(result_files[0].read_text())
    assert "acc,none" in results["results"]["disel_tiny_mc"]
    assert results["config"]["model_args"]["peft"] == str(adapter_dir)
    # The evaluated model is the base plus the adapter (lm-eval counts the parameters it evaluated).
    from safetensors.torch import load_file

    base_count = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_llama_dir).parameters())
    adapter_count = sum(t.numel() for t in load_file(adapter_dir / "adapter_model.safetensors").values())
    assert adapter_count > 0
    assert results["config"]["model_num_parameters"] == base_count + adapter_count

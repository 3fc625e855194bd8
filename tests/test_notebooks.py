"""Every notebook in notebooks/ runs top to bottom (STYLE.md 10: notebooks run in CI).

Notebooks assert the invariants they illustrate, so a notebook that executes is also a notebook whose
claims hold. New notebooks are picked up automatically.
"""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))

# Whole-notebook budget: each notebook is meant to run in under two minutes on two CPU cores; the
# per-cell limit below is the hard stop for a hung cell.
CELL_TIMEOUT_S = 300


def test_there_is_at_least_one_notebook():
    assert NOTEBOOKS, f"no notebooks found in {NOTEBOOK_DIR}"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.name for path in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path: Path):
    """The notebook executes without error in a fresh python3 kernel (the interpreter running pytest)."""
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},  # run with the notebook's folder as cwd
    )
    client.execute()

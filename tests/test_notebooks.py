"""The notebooks in notebooks/ run from top to bottom; each asserts its own claims.

Each notebook is executed by nbmake in a child pytest (a fresh kernel, started from this
interpreter: jupyter_client replaces the kernelspec's ``python`` with ``sys.executable``), so a
plain ``python -m pytest`` from the repository root runs them. A notebook fails when any cell
raises, including its ``assert`` lines.
"""

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 4, NOTEBOOKS


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_runs(notebook):
    pytest.importorskip("nbmake")
    completed = subprocess.run(
        # -n 0: one notebook, one process (not the suite's xdist workers)
        [sys.executable, "-m", "pytest", "--nbmake", "--nbmake-timeout=600", "-q", "-n", "0",
         "-p", "no:cacheprovider", str(notebook.relative_to(ROOT))],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert completed.returncode == 0, completed.stdout[-6000:] + completed.stderr[-2000:]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_is_stored_without_outputs(notebook):
    """Outputs are stripped before committing: the diff shows code, not results."""
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(notebook, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, (
                f"{notebook.name}: a code cell has stored outputs; strip them "
                "(jupyter nbconvert --clear-output --inplace)")

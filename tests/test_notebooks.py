"""The notebooks. Each page is a jupytext py:percent source notebooks/<stem>.py paired with
notebooks/<stem>.ipynb (see notebooks/README.md). Checked here: every .py has its .ipynb and the two
agree cell for cell, the .py sources pass ruff, each notebook keeps the book's frame and installs
repairlib from _config.yml's repository URL, runs under nbval at the smoke profile, and every committed
executed copy is up to date with its source."""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest
import yaml

from repairlib import book

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "notebooks").glob("[!_.]*.ipynb"))
EXECUTED = sorted((ROOT / "book" / "executed").glob("*/*.ipynb"))


def _ids(paths):
    return [p.relative_to(ROOT).as_posix() for p in paths]


def test_there_are_notebooks_and_each_belongs_to_a_section():
    assert SOURCES, "no notebooks in notebooks/"
    stems = set(book.NOTEBOOKS.values())
    assert {p.stem for p in SOURCES} <= stems, "a notebook without a section: add it to repairlib.book.NOTEBOOKS"
    toc = (ROOT / "_toc.yml").read_text()
    files = {str(e.get("file")) for part in yaml.safe_load(toc)["parts"] for e in part["chapters"]}
    assert {f"book/executed/cpu/{stem}" for stem in stems} <= files, "_toc.yml lacks a section's page"


def test_every_notebook_is_a_py_ipynb_pair():
    """Each notebooks/<stem>.py has its notebooks/<stem>.ipynb, and the other way round."""
    pys = sorted((ROOT / "notebooks").glob("[!_.]*.py"))
    assert [p.stem for p in pys] == [p.stem for p in SOURCES], (
        "pair every notebook: jupytext --to ipynb notebooks/<stem>.py (a new one) or jupytext --sync")


def cell_summary(nb) -> list:
    """What a .py source and its .ipynb must agree on: each cell's type, source, tags and mystnb metadata."""
    return [(c.cell_type, c.source, c.metadata.get("tags", []), c.metadata.get("mystnb")) for c in nb.cells]


def drift_reason(py: Path, ipynb: Path) -> str | None:
    """Why ipynb is not what jupytext makes of its py:percent source py (None when it is)."""
    converted = nbformat.reads(jupytext.writes(jupytext.read(py, fmt="py:percent"), fmt="ipynb"), 4)
    committed = nbformat.read(str(ipynb), 4)
    fix = f"run jupytext --sync notebooks/{py.name}"
    if converted.metadata.get("kernelspec") != committed.metadata.get("kernelspec"):
        return f"{ipynb.name}: kernelspec differs from {py.name}'s header; {fix}"
    ours, theirs = cell_summary(converted), cell_summary(committed)
    if ours != theirs:
        first = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
        return f"{ipynb.name} has drifted from {py.name} (cell {first} differs, or the cell count); {fix}"
    return None


@pytest.mark.parametrize("path", SOURCES, ids=_ids(SOURCES))
def test_ipynb_matches_its_py_source(path):
    reason = drift_reason(path.with_suffix(".py"), path)
    assert reason is None, reason


def test_drift_check_catches_a_changed_cell(tmp_path):
    py, ipynb = tmp_path / "nb.py", tmp_path / "nb.ipynb"
    py.write_text('# %% [markdown]\n# # Title\n\n# %% tags=["parameters"]\nx = 1\n')
    ipynb.write_text(jupytext.writes(jupytext.read(py), fmt="ipynb"))
    assert drift_reason(py, ipynb) is None
    py.write_text('# %% [markdown]\n# # Title\n\n# %%\nx = 1\n')  # the parameters tag is gone
    assert "nb.ipynb has drifted from nb.py (cell 1 differs" in drift_reason(py, ipynb)


def test_notebook_sources_pass_ruff():
    """ruff check notebooks: the .py sources are linted like the rest of the code (see pyproject.toml)."""
    cmd = [sys.executable, "-m", "ruff", "check", "--output-format=concise", "notebooks"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"ruff check notebooks:\n{proc.stdout}{proc.stderr}"


@pytest.mark.parametrize("path", SOURCES, ids=_ids(SOURCES))
def test_install_cell_installs_from_the_repository_url(path):
    """The URL of the install cell is _config.yml's repository.url (the one place the URL is set)."""
    url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    install = next(c for c in nbformat.read(str(path), 4).cells if c.cell_type == "code")
    assert re.findall(r"git\+([^\"'\s]+)", install.source) == [url], (
        f"{path.name}: the install cell must pip-install git+{url} (repository.url of _config.yml)")


@pytest.mark.parametrize("path", SOURCES, ids=_ids(SOURCES))
def test_notebook_keeps_the_frame(path):
    nb = nbformat.read(str(path), as_version=4)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), "title first"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), (
        f"{path.name}: commit the source without outputs (the executed copies live in book/executed/)")
    assert "find_spec(\"repairlib\")" in code[0].source, f"{path.name}: the first code cell installs repairlib"
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, f"{path.name}: exactly one cell tagged 'parameters'"
    values = {}
    for node in ast.parse(params[0].source).body:
        if isinstance(node, ast.Assign):
            values[node.targets[0].id] = ast.unparse(node.value)
    assert values.pop("profile") == "os.environ.get('REPAIR_PROFILE', 'cpu')", path.name
    assert all(v == "None" for v in values.values()), f"{path.name}: overrides default to None: {values}"
    assert "show_provenance(" in code[-1].source, f"{path.name}: the last code cell shows the provenance"


@pytest.mark.slow
@pytest.mark.parametrize("path", SOURCES, ids=_ids(SOURCES))
def test_notebook_runs_under_nbval_at_the_smoke_profile(path, tmp_path):
    env = {**os.environ, "REPAIR_PROFILE": "smoke", "TQDM_DISABLE": "1", "REPAIR_ZOO": str(tmp_path / "zoo"),
           "REPAIR_RESULTS": str(tmp_path / "results"), "MPLBACKEND": "Agg"}
    cmd = [sys.executable, "-m", "pytest", "-q", "--color=no", "-p", "no:cacheprovider", "--nbval-lax",
           "--nbval-current-env",
           "--nbval-cell-timeout=600", str(path)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200, check=False)
    assert proc.returncode == 0, f"{path.name} failed under nbval:\n{proc.stdout[-6000:]}\n{proc.stderr[-2000:]}"


def code_cells(nb) -> list:
    """The code cells' sources, without papermill's injected-parameters cell."""
    return [c.source for c in nb.cells
            if c.cell_type == "code" and "injected-parameters" not in c.metadata.get("tags", [])]


def stale_reason(executed: Path, source: Path) -> str | None:
    """Why the executed copy does not match its source notebook (None when it does)."""
    if not source.exists():
        return f"{executed.relative_to(executed.parents[2])} has no source notebook {source.name}"
    nb = nbformat.read(str(executed), 4)
    profile = nb.metadata.get("papermill", {}).get("parameters", {}).get("profile")
    if profile != executed.parent.name:
        return (f"{executed.parent.name}/{executed.name} was executed at profile {profile!r}, not "
                f"{executed.parent.name!r} (run it with python -m repairlib book)")
    ran, now = code_cells(nb), code_cells(nbformat.read(str(source), 4))
    if ran != now:
        first = next((i for i, (a, b) in enumerate(zip(ran, now)) if a != b), min(len(ran), len(now)))
        return (f"{executed.parent.name}/{executed.name} is stale: code cell {first} differs from "
                f"notebooks/{source.name}; rerun python -m repairlib book --profile {executed.parent.name} "
                f"--only {executed.stem}")
    return None


def test_every_executed_copy_matches_its_source():
    """book/executed/<profile>/<name>.ipynb must have run the code of notebooks/<name>.ipynb."""
    reasons = [stale_reason(path, ROOT / "notebooks" / path.name) for path in EXECUTED]
    stale = [r for r in reasons if r]
    assert not stale, "\n".join(stale)


def test_stale_check_catches_a_changed_cell(tmp_path):
    source = tmp_path / "notebooks" / "nb.ipynb"
    executed = tmp_path / "book" / "executed" / "cpu" / "nb.ipynb"
    for p in (source, executed):
        p.parent.mkdir(parents=True)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell("x")])
    nbformat.write(nb, str(source))
    injected = nbformat.v4.new_code_cell('profile = "cpu"', metadata={"tags": ["injected-parameters"]})
    ran = nbformat.v4.new_notebook(cells=[nb.cells[0], injected, nb.cells[1]])
    ran.metadata["papermill"] = {"parameters": {"profile": "smoke"}}
    nbformat.write(ran, str(executed))
    assert "executed at profile 'smoke', not 'cpu'" in stale_reason(executed, source)
    ran.metadata["papermill"]["parameters"]["profile"] = "cpu"
    nbformat.write(ran, str(executed))
    assert stale_reason(executed, source) is None  # the injected cell is ignored
    ran.cells[2].source = "x + 1"
    nbformat.write(ran, str(executed))
    assert "cpu/nb.ipynb is stale: code cell 1 differs" in stale_reason(executed, source)
    assert "has no source notebook" in stale_reason(executed, tmp_path / "notebooks" / "other.ipynb")

"""Colab's way in. Every notebook's install cell pip-installs ``repairlib[book] @ git+<URL>`` with URL
from ``_config.yml`` and its title cell states an estimated Colab time (repairlib.book.colab); the slow
test installs the project that way from a local clone of HEAD into a fresh virtual environment that
looks like Colab (torch and the rest already there) and runs a notebook at the smoke profile there.

Measured on the 2-core development machine, 2026-12-01, load average 8 (other jobs running): the
slow test 61 s (clone 0.2 s, jupytext 3 s, venv 6 s, pip install 17 s, import check 6 s, kernel and
probe notebook 13 s, the quickstart at smoke 16 s), 86 s with pytest's start; after the commit
that put the notes into the notebooks 87 s (load 9-11); a run under load 30 took 107 s. pip downloads only the build backend (setuptools, for the wheel it builds from
the clone) unless its cache has it; every other requirement is already installed, as on Colab.
"""

import ast
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from repairlib.book import colab

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "00_quickstart"  # the quickest page at the smoke profile


# ------------------------------------------------------------------ the first cells, checked fast

def test_first_cells_are_written_from_the_one_table_and_the_one_url():
    stale = colab.write_first_cells(ROOT, check=True)
    assert not stale, (f"first cells out of date: {[p.name for p in stale]}; run python -c 'from repairlib.book "
                       f"import colab; colab.write_first_cells()' and jupytext --sync those notebooks")
    assert colab.measured_cpu_s(ROOT), "no notebook timed in both runs of bench_book.json"
    for stem in colab.measured_cpu_s(ROOT):
        title = nbformat.read(str(ROOT / "notebooks" / f"{stem}.ipynb"), 4).cells[0].source
        assert " ".join(colab.colab_note(stem).split()) in " ".join(title.split()), (
            f"{stem}.ipynb's title cell lacks its Colab estimate; run jupytext --sync notebooks/{stem}.py")


def test_measured_times_are_the_benchmark_records(tmp_path):
    runs = json.loads((ROOT / "benchmarks" / "results" / "bench_book.json").read_text())["runs"]
    measured = colab.measured_cpu_s(ROOT)
    for stem, (cold, warm) in measured.items():
        rerun = all(stem in runs.get(k, {}).get("notebooks", {}) for k in colab.PAGE_RUNS)
        cold_run, warm_run = ("cpu_cold_page", "cpu_warm_page") if rerun else ("cpu_cold", "cpu_warm")
        assert (cold, warm) == (runs[cold_run]["notebooks"][stem]["seconds"],
                                runs[warm_run]["notebooks"][stem]["seconds"]), stem
    assert set(measured) <= {p.stem for p in (ROOT / "notebooks").glob("*.py")}
    assert set(measured) == set(runs["cpu_cold"]["notebooks"]) & set(runs["cpu_warm"]["notebooks"])
    # a root without the records, or with only one of the two runs: one clear error each
    with pytest.raises(FileNotFoundError, match="bench_book.json is missing"):
        colab.measured_cpu_s(tmp_path)
    (tmp_path / colab.BENCH_BOOK).parent.mkdir(parents=True)
    (tmp_path / colab.BENCH_BOOK).write_text(json.dumps({"runs": {"cpu_cold": runs["cpu_cold"]}}))
    with pytest.raises(KeyError, match="no run cpu_warm"):
        colab.measured_cpu_s(tmp_path)
    # a new timed run changes the notes with no edit to the code
    fresh = {"cpu_cold": {"date": "2027-01-05 10:00 UTC", "notebooks": {"04_repair": {"seconds": 600.0}}},
             "cpu_warm": {"date": "2027-01-05 11:00 UTC", "notebooks": {"04_repair": {"seconds": 60.0}}}}
    (tmp_path / colab.BENCH_BOOK).write_text(json.dumps({"runs": fresh}))
    note = colab.colab_note("04_repair", tmp_path)
    assert colab.measured_cpu_s(tmp_path) == {"04_repair": (600.0, 60.0)}
    assert "2027-01-05," in note and "600 s with an empty" in note and "about 2 minutes" in note  # 60 + 540/10 s
    # a page rerun alone, cold and warm, takes that page's times (and dates) from the page runs
    pages = {"cpu_cold_page": {"notebooks": {"04_repair": {"seconds": 900.0, "date": "2027-02-01 09:00 UTC"}}},
             "cpu_warm_page": {"notebooks": {"04_repair": {"seconds": 90.0, "date": "2027-02-01 10:00 UTC"}}}}
    (tmp_path / colab.BENCH_BOOK).write_text(json.dumps({"runs": {**fresh, **pages}}))
    assert colab.measured_cpu_s(tmp_path) == {"04_repair": (900.0, 90.0)}
    note = colab.colab_note("04_repair", tmp_path)  # two threads: 90 + 2 x 810 / 10 s = 252 s
    assert "2027-02-01," in note and "two torch threads" in note and "about 5 minutes" in note
    del pages["cpu_warm_page"]  # a cold rerun without its warm one is not used
    (tmp_path / colab.BENCH_BOOK).write_text(json.dumps({"runs": {**fresh, **pages}}))
    assert colab.measured_cpu_s(tmp_path) == {"04_repair": (600.0, 60.0)}


def test_the_estimate_is_the_stated_arithmetic():
    measured = colab.measured_cpu_s(ROOT)
    cold, warm = measured["05_1_normalization"]
    assert colab.t4_seconds("05_1_normalization") == pytest.approx(warm + (cold - warm) / colab.T4_TRAINING_SPEEDUP)
    for stem, (c, w) in measured.items():  # never below the work without training,
        assert w <= colab.t4_seconds(stem) <= max(c, w), stem  # never above the CPU's own time
    note = colab.colab_note("05_1_normalization")
    minutes = math.ceil(colab.t4_seconds("05_1_normalization") / 60)  # whole minutes, rounded up
    assert "an estimate, not a measurement" in note and f"about {minutes} minutes" in note and f"{cold:.0f} s" in note


def test_first_cells_rewrite_the_url_and_the_note_only():
    text = ('# %% [markdown]\n# # Title\n#\n# Intro.\n\n# %% tags=["hide-cell"]\n'
            'subprocess.check_call([sys.executable, "-m", "pip", "install", "repairlib[book] @ git+https://old/x"])\n\n'
            '# %%\nx = "git+https://old/x"\n')
    new = colab.first_cells(text, "04_repair", "https://new/y")
    assert "git+https://new/y\"])" in new and 'x = "git+https://old/x"' in new  # the install cell only
    assert new.startswith("# %% [markdown]\n# # Title\n#\n# Intro.\n#\n# " + colab.NOTE_START)
    assert colab.first_cells(new, "04_repair", "https://new/y") == new  # idempotent
    moved = colab.first_cells(new.replace("Intro.", "Intro, longer."), "05_2_imagenet_resnets", "https://new/y")
    assert moved.count(colab.NOTE_START) == 1 and "Intro, longer." in moved
    assert f"{colab.measured_cpu_s(ROOT)['05_2_imagenet_resnets'][0]:.0f} s" in " ".join(moved.replace("\n#", " ").split())


# ------------------------------------------------------------------ the install, the Colab way

def install_argv(source: str, python: str) -> list:
    """The command of the install cell's ``subprocess.check_call([...])``, run by ``python``."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "check_call":
            return [python if ast.unparse(e) == "sys.executable" else ast.literal_eval(e) for e in node.args[0].elts]
    raise AssertionError(f"no subprocess.check_call in the install cell:\n{source}")


def _snapshot(root: Path) -> dict:
    """Where a notebook run could write into the checkout: the results and executed copies (every
    file's size and mtime) and the names at the top of the checkout and of notebooks/."""
    found = {}
    for sub in ("book/results", "book/executed"):
        for path in sorted((root / sub).rglob("*")):
            if path.is_file():
                found[path.relative_to(root).as_posix()] = (path.stat().st_mtime_ns, path.stat().st_size)
    found["names"] = sorted(p.name for p in root.iterdir()) + sorted(p.name for p in (root / "notebooks").iterdir())
    return found


def _run(cmd, cwd, env, timeout=600):
    start = time.time()
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    print(f"{time.time() - start:6.1f} s  {' '.join(map(str, cmd))[:120]}")
    return proc


@pytest.mark.slow
def test_the_install_cell_installs_into_a_fresh_venv_where_a_notebook_runs(tmp_path):
    """Clone HEAD; point the clone's _config.yml at the clone (file://localhost/..., as a fork would
    point it at itself) and rewrite its first cells from it; make a venv that sees the machine's
    packages (Colab's preinstalled torch, jupyter, ...); run the install cell's pip command there; run
    the notebook with papermill in that venv from an empty working directory, REPAIR_RESULTS unset.

    The install cell skips pip when repairlib is importable. On Colab it is not; in this venv the
    development checkout's editable install is visible through the system site-packages, so the test
    runs the cell's own command (parsed from the cell) instead of the cell's guard, and then checks
    that the venv imports the freshly installed copy, not the checkout."""
    start = time.time()
    clone, venv, work = tmp_path / "clone", tmp_path / "venv", tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "REPAIR_RESULTS", "REPAIR_PROFILE", "JUPYTER_PATH")}
    env.update(OMP_NUM_THREADS="1", TQDM_DISABLE="1", REPAIR_ZOO=str(tmp_path / "zoo"), PIP_DISABLE_PIP_VERSION_CHECK="1")
    _run(["git", "clone", "--quiet", ROOT, clone], tmp_path, env)

    # the URL, set in one place: a fork's _config.yml names the fork; the first cells follow it
    url = f"file://localhost{clone}"  # pip's requirement parser wants a host in git+file URLs
    config = clone / "_config.yml"
    config.write_text(re.sub(r"(?m)^(repository:\n  url: ).*$", rf"\g<1>{url}", config.read_text()))
    assert colab.repository_url(clone) == url
    colab.write_first_cells(clone)
    _run([sys.executable, "-m", "jupytext", "--sync", f"notebooks/{NOTEBOOK}.py"], clone, env)
    notebook = clone / "notebooks" / f"{NOTEBOOK}.ipynb"
    install = next(c for c in nbformat.read(str(notebook), 4).cells if c.cell_type == "code").source
    assert f"git+{url}" in install

    _run([sys.executable, "-m", "venv", "--system-site-packages", venv], tmp_path, env)
    python = venv / "bin" / "python"
    argv = install_argv(install, str(python))
    assert argv[1:5] == ["-m", "pip", "install", "-q"] and argv[-1] == f"repairlib[book] @ git+{url}"
    _run(argv, work, env)
    where = _run([python, "-c", "import repairlib; print(repairlib.__file__)"], work, env).stdout.strip()
    assert Path(where).is_relative_to(venv), f"the venv imports {where}, not its own install"

    # the venv's own python3 kernel (Colab's python3 kernel is its Python); JUPYTER_PATH puts it
    # before the machine's python3 kernelspec, which runs the machine's Python
    _run([python, "-m", "ipykernel", "install", "--sys-prefix", "--name", "python3"], work, env)
    env["JUPYTER_PATH"] = str(venv / "share" / "jupyter")
    probe = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import sys, repairlib\nprint(repairlib.__file__)\nprint(sys.executable)")])
    nbformat.write(probe, str(tmp_path / "probe.ipynb"))
    _run([python, "-m", "papermill", tmp_path / "probe.ipynb", tmp_path / "probe_out.ipynb", "-k", "python3"], work, env)
    printed = nbformat.read(str(tmp_path / "probe_out.ipynb"), 4).cells[0].outputs[0]["text"].split()
    assert all(Path(p).is_relative_to(venv) for p in printed), f"the kernel runs outside the venv: {printed}"

    before = _snapshot(ROOT)
    out = tmp_path / "out" / f"{NOTEBOOK}.ipynb"
    out.parent.mkdir()
    _run([python, "-m", "papermill", notebook, out, "-p", "profile", "smoke", "-k", "python3"], work, env, timeout=900)
    ran = nbformat.read(str(out), 4)
    errors = [o for c in ran.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors and ran.metadata["papermill"]["parameters"] == {"profile": "smoke"}
    assert "Smoke profile" in json.dumps([c.get("outputs", []) for c in ran.cells]), "the smoke banner is missing"
    assert _snapshot(ROOT) == before, "the run wrote into the development checkout"
    assert sorted(p.name for p in work.iterdir()) == [], f"a smoke run wrote into its working directory: {list(work.iterdir())}"
    assert not subprocess.run(["git", "status", "--porcelain", "--ignored", "--", ".", ":(exclude)notebooks", ":(exclude)_config.yml"],
                              cwd=clone, capture_output=True, text=True, check=True).stdout.strip(), "the run wrote into the clone"
    print(f"{time.time() - start:6.1f} s  in all")

"""Fault injection (issue #14): runs killed with SIGKILL at random points, then run again.

After every kill nothing loadable-but-wrong exists: a checkpoint at its final path is complete (and
the one an uninterrupted run writes), an executed notebook at its final path is the previous complete
copy or the complete new one; the rerun gives what an uninterrupted run gives, bit for bit.
Bounded in time: per case an uninterrupted run in this process, 3 runs in processes of their own
killed with SIGKILL (process group and all), then a rerun in this process: about 40 s on 2 cores.
"""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import torch

from repairlib import book, cli, zoo
from repairlib.book import runner

ROOT = Path(__file__).resolve().parents[1]
KILLS = 3
RANDOM = random.Random(14)  # the kill points: random, the same every run
pytestmark = [pytest.mark.slow, pytest.mark.skipif(os.name != "posix", reason="SIGKILL and process groups are POSIX")]


def _env():
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1", "REPAIR_DOWNLOAD": "0"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def _start(argv, **kwargs):
    """A process in a session of its own, so that a kill takes its children (kernels) with it."""
    return subprocess.Popen(argv, cwd=ROOT, env=_env(), start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def _kill_when(argv, due) -> float:
    """Start ``argv``; SIGKILL its whole process group as soon as ``due(seconds since start)`` is true
    (polled every millisecond), or let it finish first. Returns the seconds it ran."""
    proc, start = _start(argv), time.perf_counter()
    while proc.poll() is None:
        if due(time.perf_counter() - start):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            break
        time.sleep(0.001)
    proc.stderr.close()
    return time.perf_counter() - start


def _after(seconds: float):
    return lambda elapsed: elapsed >= seconds


def _weights(path) -> dict:
    return zoo.load_checkpoint(path)["state_dict"]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- training

TRAIN = ["train", "--arch", "mlp", "--depth", "1", "--width", "1024", "--dataset", "fashion_mnist",
         "--train-subset", "300", "--epochs", "1", "--seed", "5", "--device", "cpu"]
PYTHON_M = [sys.executable, "-m", "repairlib"]


def test_killed_training_leaves_no_wrong_checkpoint_and_the_rerun_is_bit_identical(tmp_path, monkeypatch, capsys):
    """Kills: the moment the save's temp file appears (a kill during the save), then two random moments
    before it (start-up, data, training)."""
    reference = tmp_path / "reference.pt"
    assert cli.main([*TRAIN, "--out", str(reference)]) == 0  # the uninterrupted run
    capsys.readouterr()
    out = tmp_path / "run" / "model.pt"
    out.parent.mkdir()

    def saving(_):
        return any(out.parent.glob(".model.pt*.pt.tmp"))

    until_save = _kill_when([*PYTHON_M, *TRAIN, "--out", str(out)], saving)
    kills = [saving] + [_after(RANDOM.uniform(0.2, until_save)) for _ in range(KILLS - 1)]
    for i, due in enumerate(kills):
        if i:
            _kill_when([*PYTHON_M, *TRAIN, "--out", str(out)], due)
        visible = [p.name for p in out.parent.iterdir() if not p.name.startswith(".")]
        assert visible in ([], ["model.pt"]), visible  # no partial file under another visible name
        if out.exists():  # only ever the complete checkpoint
            assert _same(_weights(out), _weights(reference)), f"kill {i}"
    out.unlink(missing_ok=True)
    assert cli.main([*TRAIN, "--out", str(out)]) == 0  # the rerun, beside what the kills left
    assert _same(_weights(out), _weights(reference))
    monkeypatch.setattr(zoo, "STALE_TMP_SECONDS", 0)
    zoo.load(out)  # removes whatever temp file a killed save left
    assert [p.name for p in out.parent.iterdir()] == ["model.pt"]


# ---------------------------------------------------------------- the book

CELLS = ["import time\nprint('first', profile, widths)", "time.sleep(0.25)\nprint(sum(range(10)))",
         "time.sleep(0.25)\nprint('third')", "time.sleep(0.25)\nprint('last')"]


def _outputs(path) -> list:
    """The executed cells' outputs and execution counts, which a complete run fixes (no timings)."""
    nb = nbformat.read(str(path), as_version=4)
    return [(c.execution_count, [o.get("text") for o in c.outputs]) for c in nb.cells if c.cell_type == "code"]


def _is_complete(path) -> bool:
    nb = nbformat.read(str(path), as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code"]
    statuses = {c.metadata.get("papermill", {}).get("status") for c in cells}
    return all(c.execution_count for c in cells) and statuses == {"completed"}


def test_killed_book_run_keeps_the_previous_copy_and_the_rerun_matches(tmp_path):
    src = tmp_path / "notebooks"
    src.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells.append(nbformat.v4.new_code_cell("profile = 'cpu'\nwidths = None", metadata={"tags": ["parameters"]}))
    nb.cells += [nbformat.v4.new_code_cell(c) for c in CELLS]
    nbformat.write(nb, str(src / "faulty.ipynb"))
    kernel = book.kernel_name()

    def argv(out):
        return [sys.executable, "-m", "repairlib", "book", "--profile", "smoke", "--notebooks", str(src), "--out",
                str(out), "--no-build", "--jobs", "1", "--kernel", kernel, "-p", "widths", "[2]"]

    def run(out):  # in this process: the same runner, without a second start-up of torch
        summary = book.run_book("smoke", notebooks=src, out=out, no_build=True, jobs=1, kernel=kernel,
                                overrides={"widths": [2]}, log=lambda line: None)
        assert summary["ok"], summary

    run(tmp_path / "reference")  # the uninterrupted run
    reference = tmp_path / "reference" / "faulty.ipynb"
    assert _is_complete(reference) and ["first smoke [2]\n"] in [texts for _, texts in _outputs(reference)]
    out = tmp_path / "out"
    out.mkdir()
    previous = nbformat.read(str(reference), as_version=4)
    previous.metadata["previous_copy"] = True  # "the previous complete copy" of an earlier run
    nbformat.write(previous, str(out / "faulty.ipynb"))
    final, partial = out / "faulty.ipynb", runner.partial_path(out / "faulty.ipynb")
    seen, previous_mtime = [], final.stat().st_mtime_ns

    def executing(elapsed):  # 0.3 s into the cells, once papermill has written its first copy (anywhere)
        if not seen and (partial.exists() or final.stat().st_mtime_ns != previous_mtime):
            seen.append(elapsed)
        return bool(seen) and elapsed > seen[0] + 0.3

    until_cells = _kill_when(argv(out), executing)
    kills = [executing] + [_after(RANDOM.uniform(0.2, until_cells + 1.0)) for _ in range(KILLS - 1)]
    for i, due in enumerate(kills):
        if i:
            _kill_when(argv(out), due)
        assert final.exists(), "the previous copy was lost"
        assert _is_complete(final), f"a half-executed notebook at the final path after kill {i}"
        if not nbformat.read(str(final), as_version=4).metadata.get("previous_copy"):
            assert _outputs(final) == _outputs(reference)  # a complete new copy
        assert [p.name for p in out.iterdir() if not p.name.startswith(".")] == ["faulty.ipynb"]
    run(out)  # the rerun, beside what the kills left
    assert _outputs(out / "faulty.ipynb") == _outputs(reference)
    assert not nbformat.read(str(out / "faulty.ipynb"), as_version=4).metadata.get("previous_copy")
    assert [p.name for p in out.iterdir()] == ["faulty.ipynb"]  # the rerun removed the killed run's temp copy

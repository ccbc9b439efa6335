"""The book on many devices: submitit jobs (its local executor here, Slurm on a cluster) and one worker
per GPU, each collecting executed copies the way the runner writes them."""

import nbformat
import pytest
from test_book import GOOD, _notebook, _text

from repairlib.book import cluster


def two_notebooks(tmp_path):
    src = tmp_path / "notebooks"
    src.mkdir()
    return [_notebook(src / "a_fails.ipynb", 'raise RuntimeError("boom from the notebook")'),
            _notebook(src / "b_good.ipynb", *GOOD)]


@pytest.mark.slow
def test_submitit_jobs_run_the_notebooks_and_the_copies_are_collected(tmp_path):
    notebooks, out, lines = two_notebooks(tmp_path), tmp_path / "executed", []
    results = cluster.submit_notebooks(notebooks, "smoke", {"widths": [1, 2]}, out, folder=tmp_path / "jobs",
                                       cluster="local", log=lines.append)
    assert [(name, ok) for name, _, ok, _ in results] == [("a_fails", False), ("b_good", True)]
    assert "boom from the notebook" in results[0][3]
    good = nbformat.read(str(out / "b_good.ipynb"), 4)
    assert "profile=smoke widths=[1, 2]" in _text(good)
    assert (out / "a_fails.ipynb").exists()  # the failing notebook's copy shows its error
    assert lines[0].startswith("book: submitted 2 job(s) to local") and len(lines) == 3
    assert list((tmp_path / "jobs").iterdir()), "submitit keeps its job logs in the folder"


def test_devices_are_cuda_ids_named_once():
    assert cluster.parse_devices("cuda:0, cuda:3") == ["0", "3"]
    for bad in ("cpu", "cuda", "cuda:x", "cuda:0,cuda:0", "0,1"):
        with pytest.raises(ValueError, match="--devices"):
            cluster.parse_devices(bad)


@pytest.mark.slow
def test_each_device_worker_sees_only_its_own_gpu(tmp_path):
    src = tmp_path / "notebooks"
    src.mkdir()
    show = 'import os, time\ntime.sleep(2)\nprint("visible=" + os.environ.get("CUDA_VISIBLE_DEVICES", "all"))'
    notebooks = [_notebook(src / f"n{i}.ipynb", show) for i in range(2)]
    results = cluster.run_on_devices(notebooks, "smoke", {}, tmp_path / "out", ["3", "5"], log=lambda _: None)
    assert all(ok for _, _, ok, _ in results)
    seen = sorted(_text(nbformat.read(str(tmp_path / "out" / f"n{i}.ipynb"), 4)).strip() for i in range(2))
    assert seen == ["visible=3", "visible=5"]  # two notebooks side by side, one device each

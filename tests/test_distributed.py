"""Data-parallel training: two gloo processes on the CPU train the same weights as one process with the
same global batch and seed, and rank 0 alone writes."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parent / "scripts" / "fit_once.py"


def run(*command, tmp_path, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)


@pytest.mark.slow
def test_two_processes_train_what_one_does(tmp_path):
    torchrun = shutil.which("torchrun")
    assert torchrun, "torchrun comes with torch"
    one = run(sys.executable, str(SCRIPT), str(tmp_path / "one.pt"), tmp_path=tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    two = run(torchrun, "--nproc_per_node=2", "--master_port=29531", str(SCRIPT), str(tmp_path / "two.pt"),
              tmp_path=tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = (torch.load(tmp_path / f"{n}.pt", weights_only=True) for n in ("one", "two"))
    for key, value in a["state"].items():
        torch.testing.assert_close(b["state"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
    assert a["rows"] == 2 * 4 * 100 and b["rows"] == a["rows"] // 2  # each rank trained on half of every batch
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["one.pt", "two.pt"]


def test_a_global_batch_that_does_not_split_evenly_is_refused(monkeypatch):
    from repairlib import distributed

    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "1")
    assert torch.equal(distributed.shard(torch.arange(6)), torch.tensor([2, 3]))
    assert not distributed.is_main()
    with pytest.raises(ValueError, match="divisible by 3"):
        distributed.shard(torch.arange(10))


@pytest.mark.slow
def test_the_zoo_under_torchrun_trains_once_and_rank_0_writes(tmp_path, monkeypatch):
    from repairlib import zoo

    script = Path(__file__).parent / "scripts" / "zoo_once.py"
    two = run(shutil.which("torchrun"), "--nproc_per_node=2", "--master_port=29533", str(script),
              str(tmp_path / "zoo"), tmp_path=tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    # the two ranks print to one pipe at the same time: their lines may run together
    assert sorted(re.findall(r"rank \d sees \d+ checkpoint\(s\)", two.stdout)) == [
        "rank 0 sees 1 checkpoint(s)", "rank 1 sees 1 checkpoint(s)"]
    assert not list((tmp_path / "zoo").rglob("*.tmp")) and not list((tmp_path / "zoo").rglob("*.lock"))
    monkeypatch.setattr(zoo, "train_model", lambda *a, **k: pytest.fail("trained again: not cached"))
    zoo.trained({"arch": "mlp", "depth": 2, "width": 32, "init": "he"}, "fashion_mnist", epochs=1, seed=0,
                train_subset=400, batch_size=100, lr=0.05, device="cpu", cache_dir=tmp_path / "zoo")


def _children(pid: int) -> list:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, check=False)
    return [int(p) for p in out.stdout.split()]


@pytest.mark.slow
def test_a_rank_killed_mid_run_leaves_no_checkpoint(tmp_path):
    """SIGKILL one of two training ranks: torchrun stops the other, and --out is never written."""
    import signal
    import time

    out = tmp_path / "model.pt"
    command = [shutil.which("torchrun"), "--nproc_per_node=2", "--master_port=29535", "-m", "repairlib", "train",
               "--arch", "mlp", "--depth", "2", "--width", "32", "--dataset", "fashion_mnist", "--epochs", "400",
               "--train-subset", "4000", "--device", "cpu", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    launcher = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while len(_children(launcher.pid)) < 2 and time.time() < deadline:
            time.sleep(0.5)
        time.sleep(10)  # imports done, training under way (400 epochs take far longer)
        workers = _children(launcher.pid)
        assert len(workers) == 2 and launcher.poll() is None, "the run ended before it could be killed"
        os.kill(workers[-1], signal.SIGKILL)
        launcher.wait(timeout=180)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode != 0
    assert not out.exists() and not list(tmp_path.glob(".*.tmp")), sorted(p.name for p in tmp_path.iterdir())

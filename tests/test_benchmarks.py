"""The benchmark scripts' own arithmetic (their measurements run outside the test suite)."""

import importlib.util
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_authors_mlp_cut_is_quality_benchmark_arithmetic():
    cuts = _script("authors_mlp_cuts")
    # (train acc, train loss, test acc, test loss); endpoints' mean: 90% and loss 0.3
    record = {"v1": (0, 0, 92.0, 0.2), "v2": (0, 0, 88.0, 0.4),
              "permute": (0, 0, 50.0, 1.3), "permute_correct": (0, 0, 80.0, 0.55)}
    rows = cuts.settings({"fashionmnist_e100_l10_h512": record, "mnist_e100_l10_h64": record,
                          "fashionmnist_e100_l10_h64": record})
    assert [(d, w) for d, w, _ in rows] == [("fashionmnist", 64), ("fashionmnist", 512), ("mnist", 64)]
    c = rows[0][2]
    assert c["aligned_barrier"] == pytest.approx(40.0)
    assert c["cut_accuracy"] == pytest.approx(1 - 10 / 40)
    assert c["cut_loss"] == pytest.approx(1 - 0.25 / 1.0)
    with pytest.raises(ValueError, match="unexpected key"):
        cuts.settings({"resnet20": record})


def test_bench_book_records_a_main_job_run_from_its_progress_lines():
    bench = _script("bench_book")
    log = ("book: 2 notebook(s) at profile cpu -> /x\n[IPKernelApp] WARNING | noise\n"
           "[1/2] 05_2_imagenet_resnets         206.6 s  ok\n[2/2] C_no_alignment   12.0 s  FAILED (boom)\n"
           "book: 1 ok, 1 failed in 219 s (failed: C_no_alignment)\n")
    run = bench.parse_log(log)
    assert run["total_s"] == 219.0 and run["ok"] is False and run["jobs"] == 2
    assert run["notebooks"]["05_2_imagenet_resnets"] == {"seconds": 206.6, "ok": True, "error": None}
    with pytest.raises(SystemExit, match="no finished"):
        bench.parse_log("book: 2 notebook(s) at profile cpu -> /x\n")


def test_bench_precision_conv_shares_are_fractions_of_a_profiled_step():
    bench = _script("bench_precision")
    config = {"arch": "resnet20", "width": 0.25, "norm": "bn", "in_channels": 1}
    shares = bench.conv_shares(config, 4, (1, 28, 28), steps=1)
    assert 0 < shares["first_stage_conv_share"] < shares["conv_share"] < 1
    assert set(bench.WIDTHS) == {"resnet20 x0.25", "resnet20 x0.5", "resnet20 x1", "resnet20 x2"}


def test_bench_book_page_reruns_collect_notebooks_each_with_its_own_date():
    bench = _script("bench_book")
    first = bench.parse_log("[1/1] 05_2_imagenet_resnets  900.0 s  ok\nbook: 1 ok, 0 failed in 900 s\n")
    first.update({"date": "2027-01-01 10:00 UTC", "commit": "aaa", "log": "one.log"})
    merged = bench.merge_page_run(None, first)
    second = bench.parse_log("[1/1] 04_repair  50.0 s  FAILED (x)\nbook: 0 ok, 1 failed in 50 s\n")
    second.update({"date": "2027-01-02 10:00 UTC", "commit": "bbb", "log": "two.log"})
    merged = bench.merge_page_run(merged, second)
    assert set(merged["notebooks"]) == {"05_2_imagenet_resnets", "04_repair"} and merged["ok"] is False
    assert merged["notebooks"]["05_2_imagenet_resnets"]["date"] == "2027-01-01 10:00 UTC"
    assert merged["notebooks"]["04_repair"]["commit"] == "bbb" and merged["total_s"] == 50.0
    again = bench.merge_page_run(merged, {**first, "date": "2027-01-03 10:00 UTC"})  # a page rerun again
    assert again["notebooks"]["05_2_imagenet_resnets"]["date"] == "2027-01-03 10:00 UTC"
    before = dict(os.environ)
    with pytest.raises(SystemExit, match="--only"):
        bench.main(["--runs", "cpu_cold_page", "--out", "/dev/null"])
    assert dict(os.environ) == before  # refused before it sets $REPAIR_RESULTS or anything else

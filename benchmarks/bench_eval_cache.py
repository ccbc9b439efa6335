"""The evaluation cache on one book page: its warm run without the cache, with it empty, with it filled.

    python benchmarks/bench_eval_cache.py [--page 04_repair] [--profile cpu]

The page's source (``notebooks/<page>.py``) runs as a script in a fresh process per run, one torch
thread each. Its networks are stand-ins: the zoo "trains" a network by keeping its initialisation
(same architecture and shapes, so every evaluation, alignment and REPAIR pass costs what it costs with
trained weights; the numbers the page prints mean nothing), in a temporary zoo that a first run fills.
Then three runs side by side in time: no evaluation cache (``REPAIR_EVAL_CACHE=""``), an empty one, and
the one that run filled. Records wall and CPU seconds to benchmarks/results/bench_eval_cache.json and
whether the page printed the same lines (dates and times aside) in all three.
"""

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "bench_eval_cache.json"
STAND_INS = """
import runpy, sys
from repairlib import zoo

def fit(model, dataset, **kwargs):  # a stand-in network: the initialisation, in eval mode
    model.eval()
    return {"seconds": 0.0, "images_per_second": 0.0, "images_per_cpu_second": 0.0, "train_loss": 0.0,
            "steps": 0, "recipe": {}}

zoo.fit = fit
runpy.run_path(sys.argv[1], run_name="__main__")
"""
_VOLATILE = re.compile(r"date|wall time|seconds|\d+(\.\d+)? s\b")


def run_page(page: Path, env: dict) -> dict:
    """One run of ``page`` in a fresh process; wall and CPU seconds and its stdout lines."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", STAND_INS, str(page)], env=env, cwd=ROOT, capture_output=True,
                          text=True, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise SystemExit(f"{page.name} failed:\n{done.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1),
            "lines": [line for line in done.stdout.splitlines() if not _VOLATILE.search(line)]}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--page", default="04_repair")
    p.add_argument("--profile", default="cpu")
    args = p.parse_args()
    page = ROOT / "notebooks" / f"{args.page}.py"
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "REPAIR_ZOO": f"{tmp}/zoo", "REPAIR_PROFILE": args.profile, "REPAIR_RESULTS": f"{tmp}/r",
               "MPLBACKEND": "Agg", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1", "REPAIR_EVAL_CACHE": ""}
        run_page(page, env)  # fills the stand-in zoo
        runs = {"no cache": run_page(page, env)}
        env["REPAIR_EVAL_CACHE"] = f"{tmp}/evaluations"
        runs["empty cache"] = run_page(page, env)
        runs["filled cache"] = run_page(page, env)
        entries = list(Path(env["REPAIR_EVAL_CACHE"]).rglob("*.pt"))
    same = all(r["lines"] == runs["no cache"]["lines"] for r in runs.values())
    record = {"page": args.page, "profile": args.profile, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, 1 torch thread",
              "load_1min": os.getloadavg()[0], "cache_entries": len(entries), "same_output": same,
              "runs": {k: {"wall_seconds": v["wall_seconds"], "cpu_seconds": v["cpu_seconds"]} for k, v in runs.items()},
              "warm_speedup_cpu": runs["no cache"]["cpu_seconds"] / runs["filled cache"]["cpu_seconds"]}
    OUT.write_text(json.dumps(record, indent=1) + "\n")
    for name, r in record["runs"].items():
        print(f"{name:>12}: {r['wall_seconds']:7.1f} s wall, {r['cpu_seconds']:7.1f} s CPU")
    print(f"filled cache: {record['warm_speedup_cpu']:.2f}x less CPU time; same output: {same}")


if __name__ == "__main__":
    main()

"""How long the book takes: every notebook at the smoke profile, the cpu profile with an empty checkpoint
zoo (cold: trains every network) and again with the zoo it filled (warm: the networks and their
evaluations cached, :mod:`repairlib.evalcache`; alignment, REPAIR statistics and figures recomputed), and
one jupyter-book build. Writes benchmarks/results/bench_book.json.

    python benchmarks/bench_book.py                 # smoke, cpu cold, cpu warm, build (the lead's run)
    python benchmarks/bench_book.py --runs smoke    # seconds: every notebook at the smoke profile
    python benchmarks/bench_book.py --import-log cold.log --as cpu_cold   # record a main-job run
    python benchmarks/bench_book.py --import-log page.log --as cpu_cold_page  # a page rerun alone (--only)

``--import-log`` records a run of ``python -m repairlib book --profile cpu --jobs 2`` made with an empty
``$REPAIR_ZOO`` (the run that wrote the committed executed copies) from its progress lines, so the book's
own cold run is the measured one and need not be repeated. A page changed after those runs is timed
alone (``python -m repairlib book --profile cpu --only SECTION`` with an empty zoo, then again with
the zoo it filled) and recorded as ``cpu_cold_page`` / ``cpu_warm_page``: those records collect
notebooks, each with its own date, commit and log, and a later rerun of another page is added beside
them (:func:`merge_page_run`); :mod:`repairlib.book.colab` reads a page's times from them.

The executed copies go to a temporary directory (the book's own copies are written by
``python -m repairlib book``); measured results go to a temporary $REPAIR_RESULTS.
"""

import argparse
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from repairlib import book

ROOT = Path(__file__).resolve().parents[1]

RUNS = {"smoke": ("smoke", "fresh"), "cpu_cold": ("cpu", "fresh"), "cpu_warm": ("cpu", "reuse")}
PAGES = {"cpu_cold_page": "cpu_cold", "cpu_warm_page": "cpu_warm"}  # pages rerun alone -> their whole-book run
_DONE = re.compile(r"^\[\d+/\d+\]\s+(\S+)\s+([\d.]+) s\s+(ok|FAILED)")
_TOTAL = re.compile(r"^book: \d+ ok, \d+ failed in (\d+) s")


def parse_log(text: str, profile: str = "cpu", jobs: int = 2) -> dict:
    """A run record (as :func:`run_profile` returns) from the progress lines of ``python -m repairlib book``."""
    notebooks = {m.group(1): {"seconds": float(m.group(2)), "ok": m.group(3) == "ok", "error": None}
                 for m in map(_DONE.match, text.splitlines()) if m}
    totals = [float(m.group(1)) for m in map(_TOTAL.match, text.splitlines()) if m]
    if not notebooks or not totals:
        raise SystemExit("the log holds no finished `python -m repairlib book` run (no progress or total line)")
    return {"profile": profile, "jobs": jobs, "total_s": totals[-1], "ok": all(n["ok"] for n in notebooks.values()),
            "notebooks": notebooks, "source": "python -m repairlib book, progress lines"}


def merge_page_run(earlier, new: dict) -> dict:
    """A page-rerun record: ``new``'s notebooks, each stamped with ``new``'s date, commit and log, added
    to (or replacing the same notebook in) ``earlier``'s; ``total_s`` is the last rerun's."""
    stamped = {stem: {**entry, **{k: new.get(k) for k in ("date", "commit", "log")}}
               for stem, entry in new["notebooks"].items()}
    notebooks = {**((earlier or {}).get("notebooks", {})), **stamped}
    return {**new, "notebooks": notebooks, "ok": all(n["ok"] for n in notebooks.values())}


def run_profile(profile: str, zoo: Path, out: Path, only=None, jobs: int = 2) -> dict:
    """Execute the notebooks at ``profile`` with ``$REPAIR_ZOO=zoo``; per-notebook seconds and status."""
    os.environ["REPAIR_ZOO"] = str(zoo)  # inherited by papermill's kernels
    notebooks = book.select_notebooks(ROOT / "notebooks", only)
    start = time.time()
    results = book.run_notebooks(notebooks, profile, {}, out, cwd=ROOT / "notebooks",
                                 log=lambda line: print(f"  {line}", flush=True), jobs=jobs,
                                 earlier=book.executed_dir(profile, ROOT))  # the main job's order
    return {
        "profile": profile,
        "jobs": jobs,
        "total_s": round(time.time() - start, 1),
        "ok": all(ok for _, _, ok, _ in results),
        "notebooks": {name: {"seconds": round(s, 1), "ok": ok, "error": err} for name, s, ok, err in results},
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", nargs="+", default=[*RUNS, "build"], choices=[*RUNS, *PAGES, "build"],
                   help="cpu_cold_page / cpu_warm_page: the --only pages alone, recorded beside the earlier reruns")
    p.add_argument("--only", nargs="+", default=None, metavar="SECTION", help="a subset of the notebooks")
    p.add_argument("--zoo", type=Path, default=None,
                   help="the cpu profile's zoo: cpu_warm reuses it as it is (e.g. the zoo a "
                        "`python -m repairlib book` cold run filled); cpu_cold refuses it")
    p.add_argument("--jobs", type=int, default=2, help="notebooks side by side, as `python -m repairlib book`")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_book.json"))
    p.add_argument("--import-log", type=Path, default=None, help="record this `python -m repairlib book` log")
    p.add_argument("--as", dest="as_run", choices=[*RUNS, *PAGES], default="cpu_cold",
                   help="the run it records")
    p.add_argument("--commit", default=None, help="with --import-log: the commit the logged run executed")
    p.add_argument("--date", default=None, help="with --import-log: when the logged run started (UTC)")
    args = p.parse_args(argv)
    alone = [r for r in args.runs if r in PAGES]
    if alone and not args.only:
        raise SystemExit(f"--runs {' '.join(alone)} times pages rerun alone: name them with --only")
    if args.import_log is not None:
        profile = RUNS[PAGES.get(args.as_run, args.as_run)][0]
        args.runs, imported = [], parse_log(args.import_log.read_text(), profile, args.jobs)
        imported.update({"commit": args.commit, "date": args.date, "log": str(args.import_log)})
    else:
        imported = None

    work = Path(tempfile.mkdtemp(prefix="bench_book_"))
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ["REPAIR_RESULTS"] = str(work / "results")
    report = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
                    "device": book.device_name()},
        "commit": book.git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "runs": {},
    }
    status = 0
    if imported is not None:
        report["runs"][args.as_run] = imported
    try:
        for run in [r for r in [*RUNS, *PAGES] if r in args.runs]:
            profile, zoo_mode = RUNS[PAGES.get(run, run)]
            zoo = args.zoo if args.zoo is not None and profile == "cpu" else work / f"zoo_{profile}"
            if zoo_mode == "fresh" and zoo == args.zoo:
                raise SystemExit("--zoo is for cpu_warm: a cold run needs an empty zoo of its own")
            if zoo_mode == "fresh" and zoo.exists():
                shutil.rmtree(zoo)
            print(f"{run}: profile {profile}, {'empty' if zoo_mode == 'fresh' else 'filled'} zoo", flush=True)
            report["runs"][run] = result = run_profile(profile, zoo, work / run, args.only, args.jobs)
            result.update({"commit": report["commit"], "date": report["date"]})
            print(f"{run}: {result['total_s']} s, {'ok' if result['ok'] else 'FAILED'}", flush=True)
            status |= 0 if result["ok"] else 1
        if "build" in args.runs:
            start = time.time()
            ok = book.build_book(ROOT, path_output=work / "build")
            report["runs"]["build"] = {"total_s": round(time.time() - start, 1), "ok": ok}
            status |= 0 if ok else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():  # runs measured earlier (another commit or date) are kept beside the new ones
        earlier = json.loads(out.read_text())
        for run in PAGES:
            if run in report["runs"]:
                report["runs"][run] = merge_page_run(earlier.get("runs", {}).get(run), report["runs"][run])
        for run, result in earlier.get("runs", {}).items():
            if run not in report["runs"]:
                report["runs"][run] = {**result, "commit": result.get("commit", earlier.get("commit")),
                                       "date": result.get("date", earlier.get("date"))}
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")
    return status


if __name__ == "__main__":
    sys.exit(main())

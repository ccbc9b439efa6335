"""Colab: the notebooks' first cells, which say where repairlib is installed from and how long the
page takes on a free Colab GPU.

Every notebook's install cell (its first code cell) runs ``pip install "repairlib[book] @
git+<URL>"`` where URL is ``repository.url`` of ``_config.yml``, the one place the repository is set
(the launch buttons read it too). Its title cell ends with :func:`colab_note`: an *estimate*, not a
measurement (no GPU has run the book yet), of the page's time on a free Colab GPU (an NVIDIA T4) at
the ``cpu`` profile, made from the times measured on the 2-core development machine (:func:`measured_cpu_s`,
read from ``benchmarks/results/bench_book.json``) and one stated assumption (:data:`T4_TRAINING_SPEEDUP`).

After changing the URL or the measurements, ``python -c "from repairlib.book import colab;
colab.write_first_cells()"`` rewrites both in ``notebooks/<stem>.py`` (then ``jupytext --sync``);
``tests/test_colab_install.py`` checks that nothing is left to rewrite, and installs the project the
same way from a local clone into a fresh virtual environment and runs a notebook there.
"""

from __future__ import annotations

import math
import re
import textwrap
from pathlib import Path

BENCH_BOOK = Path("benchmarks") / "results" / "bench_book.json"  # under the book's root
MACHINE = "2 CPU cores with AVX512-BF16, one torch thread per notebook"  # the machine of those runs
PAGE_RUNS = ("cpu_cold_page", "cpu_warm_page")  # pages rerun alone after the whole-book runs
PAGE_THREADS = 2  # on both cores: two torch threads
PAGE_MACHINE = "2 CPU cores with AVX512-BF16, the page alone on two torch threads"


def measured_runs(root=None) -> dict:
    """The book's own timed runs at the cpu profile, ``python -m repairlib book --profile cpu --jobs 2``
    recorded by ``benchmarks/bench_book.py --import-log``: ``{"cpu_cold": run, "cpu_warm": run}`` from
    ``<root>/benchmarks/results/bench_book.json`` (cold: empty checkpoint zoo, every network trained;
    warm: filled zoo, networks loaded), plus ``"cpu_cold_page"`` / ``"cpu_warm_page"`` where pages were
    rerun alone since (``--only``; each notebook with its own ``date``). Each run has ``date`` and
    ``notebooks: {stem: {"seconds": s}}``."""
    import json

    from repairlib.book.results import book_root

    path = (Path(root) if root is not None else book_root()) / BENCH_BOOK
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the Colab estimates are made from the book's timed runs "
                                f"(python benchmarks/bench_book.py --import-log ...)")
    runs = json.loads(path.read_text()).get("runs", {})
    missing = [k for k in ("cpu_cold", "cpu_warm") if k not in runs]
    if missing:
        raise KeyError(f"{path} has no run {' or '.join(missing)}: record a cold and a warm run of the cpu profile")
    return {k: runs[k] for k in ("cpu_cold", "cpu_warm", *PAGE_RUNS) if k in runs}


def rerun_alone(stem: str, runs: dict) -> bool:
    """Whether ``stem``'s times come from the page reruns (:data:`PAGE_RUNS`, on :data:`PAGE_THREADS`
    torch threads): both of them time it."""
    return all(stem in runs.get(k, {}).get("notebooks", {}) for k in PAGE_RUNS)


def _timed_in(runs: dict, stem: str) -> tuple:
    """The (cold, warm) run records that time ``stem``: its page reruns where both have it (a page changed
    since the whole-book runs), else the whole-book runs."""
    keys = PAGE_RUNS if rerun_alone(stem, runs) else ("cpu_cold", "cpu_warm")
    return tuple(runs[k]["notebooks"][stem] for k in keys)


def measured_cpu_s(root=None, runs=None) -> dict:
    """``{stem: (cold seconds, warm seconds)}`` for every notebook timed in both runs of
    :func:`measured_runs` (read from ``root`` unless ``runs`` is given), in the cold run's order; a page
    rerun alone in both page runs takes its times from those."""
    runs = runs if runs is not None else measured_runs(root)
    cold, warm = runs["cpu_cold"]["notebooks"], runs["cpu_warm"]["notebooks"]
    return {stem: tuple(t["seconds"] for t in _timed_in(runs, stem)) for stem in cold if stem in warm}


def measured_on(root=None, runs=None, stem=None) -> str:
    """When and where :func:`measured_cpu_s` was measured (for ``stem``: its own times), as the notes state it."""
    runs = runs if runs is not None else measured_runs(root)
    if stem is not None and rerun_alone(stem, runs):
        dates = sorted({t.get("date", "")[:10] for t in _timed_in(runs, stem)})
        return f"{' and '.join(dates)}, {PAGE_MACHINE}"
    dates = sorted({runs[k]["date"][:10] for k in ("cpu_cold", "cpu_warm")})
    return f"{' and '.join(dates)}, {MACHINE}"


# The assumption: a T4 trains the cpu profile's networks 10x faster than one thread of the
# development machine did in that run, and runs everything else (kernel start, imports, data
# loading, alignment, evaluation, plots) no faster. Basis: a T4's peak is 8.1 TFLOP/s in fp32
# (NVIDIA's T4 datasheet); one thread of the development machine trained under bf16 autocast at
# 180 GFLOP/s (ResNet20 x1, channels_last: 969 images per CPU second x 186 MFLOP per training image)
# to 361 GFLOP/s (10 x 512 MLP: 22,839 images per CPU second x 15.8 MFLOP; benchmarks/results/
# bench_precision.json, 2026-12-03; FLOPs counted by torch.utils.flop_counter). 10x that is 1.8-3.6
# TFLOP/s, 22-45% of the T4's fp32 peak: a plausible utilisation for the small networks, short runs
# and batches of 100-2,000 images of the cpu profile, where launch and Python overheads weigh most.
T4_TRAINING_SPEEDUP = 10.0

NOTE_START = "**On a free Colab GPU"
_URL = re.compile(r"git\+[^\"'\s]+")


def t4_seconds(stem: str, measured=None, threads: int = 1) -> float:
    """The estimated seconds of notebook ``stem`` on a T4 at the cpu profile with an empty zoo: the
    measured time without training (the filled-zoo run) plus the measured training time (empty zoo
    minus filled zoo) on ``threads`` torch threads, in one-thread time, divided by
    :data:`T4_TRAINING_SPEEDUP` (its basis is one thread's rate)."""
    cold, warm = (measured if measured is not None else measured_cpu_s())[stem]
    return warm + max(cold - warm, 0.0) * threads / T4_TRAINING_SPEEDUP


def _minutes(seconds: float) -> str:
    m = max(1, math.ceil(seconds / 60))
    return f"{m} minute" + ("s" if m != 1 else "")


def colab_note(stem: str, root=None) -> str:
    """The Markdown paragraph that ends notebook ``stem``'s title cell: the estimated time on a free
    Colab GPU, marked as an estimate, with the measured figures and the assumption it comes from."""
    runs = measured_runs(root)  # one read of bench_book.json for the times and their date
    measured = measured_cpu_s(runs=runs)
    cold, warm = measured[stem]
    return (
        f"{NOTE_START} (an estimate, not a measurement).** At the `cpu` profile this page should take "
        f"about {_minutes(t4_seconds(stem, measured, PAGE_THREADS if rerun_alone(stem, runs) else 1))} on Colab's T4, training its networks from scratch, plus "
        f"the install cell and the data download. Measured without a GPU ({measured_on(runs=runs, stem=stem)}): "
        f"{cold:.0f} s with an empty checkpoint zoo, {warm:.0f} s with the networks cached; the "
        f"estimate assumes that training runs {T4_TRAINING_SPEEDUP:g}x faster on a T4 and everything else "
        f"no faster (the basis: the *Reproduce* page, and `repairlib.book.colab`). The `paper` profile trains the paper's networks "
        f"for the paper's epochs and is not estimated here (see *Running at the paper's scale*)."
    )


def repository_url(root=None) -> str:
    """``repository.url`` of ``<root>/_config.yml`` (default: the book's root)."""
    import yaml

    from repairlib.book.results import book_root

    root = Path(root) if root is not None else book_root()
    return yaml.safe_load((root / "_config.yml").read_text())["repository"]["url"]


def _cells(text: str) -> list:
    """py:percent text -> [(start line, end line)] of its cells (the header before the first is skipped)."""
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.startswith("# %%")]
    return list(zip(starts, starts[1:] + [len(lines)]))


def first_cells(text: str, stem: str, url: str, root=None) -> str:
    """py:percent source ``text`` with its title cell ending in :func:`colab_note` and its first code
    cell installing from ``git+url``; nothing else changes."""
    lines = text.splitlines(keepends=True)
    cells = _cells(text)
    title = next(c for c in cells if lines[c[0]].startswith("# %% [markdown]"))
    code = next(c for c in cells if not lines[c[0]].startswith("# %% [markdown]"))
    for i in range(*code):
        lines[i] = _URL.sub(lambda _: f"git+{url}", lines[i])
    start, end = title
    body = lines[start + 1:end]
    while body and not body[-1].strip():  # the blank lines between the cells
        body.pop()
    tail = lines[start + 1 + len(body):end]
    note_at = next((i for i, line in enumerate(body) if line.startswith("# " + NOTE_START)), None)
    if note_at is not None:
        stop = next((i for i in range(note_at, len(body)) if body[i].strip() == "#"), len(body))
        body = body[:note_at] + body[stop + 1:]
        while body and body[-1].strip() == "#":
            body.pop()
    note = textwrap.wrap(colab_note(stem, root), 100, break_on_hyphens=False)
    body = body + ["#\n"] + [f"# {line}\n" for line in note]
    return "".join(lines[:start + 1] + body + tail + lines[end:])


def write_first_cells(root=None, check: bool = False) -> list:
    """Rewrite the first cells of every measured notebook ``<root>/notebooks/<stem>.py`` (see
    :func:`first_cells`; URL from ``_config.yml``). Returns the paths that changed (with
    ``check=True``: that would change, writing nothing). Run ``jupytext --sync`` on them afterwards."""
    from repairlib.book.results import book_root

    root = Path(root) if root is not None else book_root()
    url = repository_url(root)
    changed = []
    for stem in measured_cpu_s(root):
        path = root / "notebooks" / f"{stem}.py"
        if not path.exists():
            continue
        text = path.read_text()
        new = first_cells(text, stem, url, root)
        if new != text:
            changed.append(path)
            if not check:
                path.write_text(new)
    return changed

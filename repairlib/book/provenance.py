"""Provenance: where a page's numbers come from (profile, data set, device, commit, date, versions)."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import time
from pathlib import Path

from repairlib.book.profiles import check_profile

ROOT = Path(__file__).resolve().parents[2]  # the repository (an editable install); see results.book_root()


def git_commit(root: Path = ROOT) -> str:
    """Short commit hash of ``root`` (``+dirty`` when tracked files differ), or "unknown" outside git."""
    try:
        def git(*a):
            return subprocess.run(["git", "-C", str(root), *a], capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()
        commit = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!book/executed",
                    ":!book/results")
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name(device=None) -> str:
    """A readable name of the device the experiments run on, e.g. "cuda (NVIDIA H100)" or "cpu (2 cores)"."""
    import torch

    from repairlib.plumbing import default_device

    device = str(default_device(device))
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    if device == "cpu":
        threads = torch.get_num_threads()
        return f"cpu ({threads} thread{'s' if threads != 1 else ''}, {os.cpu_count()} cores)"
    return device


def _datasets(params: dict) -> str:
    found = []
    for key, value in params.items():
        if key == "dataset" or key.endswith("_dataset") or key == "datasets":
            for name in ([value] if isinstance(value, str) else list(value or [])):
                if name not in found:
                    found.append(name)
    return ", ".join(found) or "unknown"


def provenance_record(profile: str, params: dict, start: float | None = None) -> dict:
    """Where a page's numbers come from: profile, data set, device, seeds, commit, date, wall time, versions.

    ``params`` is the section's :func:`settings` dict; ``start`` a ``time.time()`` taken at the top of
    the notebook (wall time is ``None`` without it).
    """
    import torch

    from repairlib import __version__

    return {
        "profile": check_profile(profile),
        "dataset": _datasets(params),
        "device": device_name(params.get("device")),
        # the pairs behind the page's measurements where the profile has them, else the one pair
        "seeds": ([list(pair) for pair in params["seed_pairs"]] if params.get("seed_pairs")
                  else list(params.get("seeds", []))),
        "commit": git_commit(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "wall_time_s": None if start is None else round(time.time() - start, 1),
        "torch": torch.__version__,
        "repairlib": __version__,
        "python": platform.python_version(),
    }


def provenance_markdown(info: dict) -> str:
    rows = "\n".join(f"| {k.replace('_', ' ')} | {v} |" for k, v in info.items())
    return "**Provenance of this page**\n\n| what | value |\n|---|---|\n" + rows + "\n"


def show_provenance(profile: str, params: dict, start: float | None = None) -> None:
    """Display the provenance table: the last cell of every notebook, ``show_provenance(profile, cfg, start)``.

    Rendered as a Markdown table in Jupyter and in the book; printed as text elsewhere. Returns nothing
    (so the cell shows the table only); :func:`provenance` gives the dict.
    """
    info = provenance_record(profile, params, start)
    text = provenance_markdown(info)
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display

        if get_ipython() is None:
            raise ImportError
        display(Markdown(text))
    except ImportError:
        print(text)


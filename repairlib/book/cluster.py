"""The book on many devices: notebooks side by side with one GPU each, or as jobs on a cluster.

- :func:`run_on_devices`: ``python -m repairlib book --devices cuda:0,cuda:1``. One worker process per
  device, each seeing only its GPU (``CUDA_VISIBLE_DEVICES``), takes the next notebook until none is
  left; the checkpoint zoo's lock keeps every shared network trained once.
- :func:`submit_notebooks`: ``python -m repairlib book --cluster slurm``. Each notebook is one job
  submitted through submitit (Slurm on a cluster; its local executor here and in the tests); the
  executed copies are collected when the jobs end, and the book is then built as usual.

Both run :func:`repairlib.book.runner.execute` on each notebook, so an executed copy is written in
the same way (renamed into place only when complete) and a failing notebook does not stop the rest.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from repairlib.book.runner import execute, kernel_name, plan_parameters, report_outcome


def parse_devices(text: str) -> list:
    """``"cuda:0,cuda:1"`` -> ``["0", "1"]`` (the CUDA device ids); ``ValueError`` for anything else."""
    ids = []
    for item in (t.strip() for t in str(text).split(",")):
        kind, _, index = item.partition(":")
        if kind != "cuda" or not index.isdigit():
            raise ValueError(f"--devices takes CUDA devices such as cuda:0,cuda:1, got {item!r}")
        ids.append(index)
    if len(set(ids)) != len(ids):
        raise ValueError(f"--devices names a device twice: {text!r}")
    return ids


def _claim_device(queue) -> None:
    """Worker start-up: keep one device id from ``queue`` for the worker's whole life."""
    os.environ["CUDA_VISIBLE_DEVICES"] = queue.get()


def run_on_devices(notebooks, profile: str, overrides: dict, out_dir, devices, *, cwd=None, kernel=None,
                   log=print) -> list:
    """Execute ``notebooks`` into ``out_dir`` side by side, one per device of ``devices`` (CUDA ids,
    :func:`parse_devices`); returns ``[(name, seconds, ok, error)]`` in the given order."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    plan, out_dir, kernel = plan_parameters(notebooks, profile, overrides), Path(out_dir), kernel or kernel_name()
    out_dir.mkdir(parents=True, exist_ok=True)
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    for device in devices:
        queue.put(device)
    results = {}
    with ProcessPoolExecutor(len(devices), mp_context=context, initializer=_claim_device,
                             initargs=(queue,)) as pool:
        futures = {pool.submit(execute, path, out_dir / path.name, plan[path], kernel, cwd or path.parent): path
                   for path in notebooks}
        for future in as_completed(futures):
            path = futures[future]
            results[path] = report_outcome(path, _outcome(future.result), len(results) + 1, len(notebooks), log)
    return [results[p] for p in notebooks]


def submit_notebooks(notebooks, profile: str, overrides: dict, out_dir, *, folder, cluster: str | None = None,
                     kernel=None, cwd=None, timeout_min: int = 24 * 60, options=None, log=print) -> list:
    """Submit every notebook as one submitit job and wait for them; returns ``[(name, seconds, ok, error)]``.

    ``cluster``: ``"slurm"``, ``"local"`` (jobs as local processes: what the tests use) or None
    (submitit's choice: Slurm where ``sbatch`` exists, else local). ``folder`` holds submitit's logs.
    ``options``: further executor parameters (``{"slurm_partition": "gpu", "gpus_per_node": 1}``).
    """
    import submitit

    plan, out_dir, kernel = plan_parameters(notebooks, profile, overrides), Path(out_dir), kernel or kernel_name()
    out_dir.mkdir(parents=True, exist_ok=True)
    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    executor.update_parameters(timeout_min=timeout_min, name="repairlib-book", **(options or {}))
    jobs = [executor.submit(execute, path, out_dir / path.name, plan[path], kernel, cwd or path.parent)
            for path in notebooks]
    log(f"book: submitted {len(jobs)} job(s) to {executor.cluster} (logs in {folder})")
    results = []
    for i, (path, job) in enumerate(zip(notebooks, jobs), 1):
        results.append(report_outcome(path, _outcome(job.result), i, len(notebooks), log))
    return results


def _outcome(result) -> tuple:
    """``(ok, seconds, error)`` of a finished job; a job that died (killed, out of time) is a failure."""
    start = time.time()
    try:
        return result()
    except Exception as e:  # noqa: BLE001 -- a lost job is reported like a failed notebook
        return False, time.time() - start, f"{type(e).__name__}: {e}".strip().splitlines()[0]

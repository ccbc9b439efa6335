"""The runner: papermill over ``notebooks/*.ipynb``, the results page, then ``jupyter-book build``.

Each executed copy is written to a hidden temp file beside its final path (``.<stem>.partial.ipynb``)
and renamed when papermill is done, so a run killed midway leaves the previous complete copy (or
none) at the final path, never a half-executed notebook.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from repairlib.book.profiles import NOTEBOOKS, SECTIONS, check_profile
from repairlib.book.results import book_results_dir, book_root, write_results_page


def parse_value(text: str):
    """A ``-p NAME VALUE`` value: JSON, else a Python literal, else the string itself."""
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            pass
    return text


def _order(path: Path):
    stems = list(NOTEBOOKS.values())
    return (stems.index(path.stem) if path.stem in stems else len(stems), path.name)


def select_notebooks(notebook_dir, only=None) -> list:
    """Notebooks to run: every ``*.ipynb`` of ``notebook_dir`` in reading order, or those of ``only``.

    ``only`` holds section ids ("3", "5.1", "quickstart", ...) or notebook stems ("04_repair").
    """
    notebook_dir = Path(notebook_dir)
    if not notebook_dir.is_dir():
        raise FileNotFoundError(f"notebook directory {notebook_dir} does not exist")
    found = sorted((p for p in notebook_dir.glob("*.ipynb") if not p.name.startswith(("_", "."))), key=_order)
    if only is None:
        if not found:
            raise FileNotFoundError(f"no notebooks (*.ipynb) in {notebook_dir}")
        return found
    chosen = []
    for name in only:
        stem = NOTEBOOKS.get(str(name), Path(str(name)).stem)
        if stem not in NOTEBOOKS.values() and not (notebook_dir / f"{stem}.ipynb").exists():
            raise ValueError(f"unknown section {name!r}; valid sections: {', '.join(SECTIONS)} "
                             f"(or a notebook name: {', '.join(p.stem for p in found) or 'none found'})")
        path = notebook_dir / f"{stem}.ipynb"
        if not path.exists():
            raise FileNotFoundError(f"section {name!r}: notebook {path} does not exist (yet)")
        if path not in chosen:
            chosen.append(path)
    return chosen


def parameter_names(path) -> list:
    """Names assigned in the notebook's cell tagged ``parameters``; ValueError if it has none."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            names = []
            for node in ast.parse(cell.source).body:
                targets = node.targets if isinstance(node, ast.Assign) else (
                    [node.target] if isinstance(node, ast.AnnAssign) else [])
                names += [t.id for t in targets if isinstance(t, ast.Name)]
            return names
    raise ValueError(f"notebook {path} has no code cell tagged 'parameters' (see repairlib.book)")


def kernel_name() -> str:
    """The installed Jupyter kernel that runs this Python (``python -m ipykernel install --user``)."""
    from jupyter_client.kernelspec import KernelSpecManager

    here = os.path.realpath(sys.executable)
    try:
        specs = KernelSpecManager().get_all_specs()
    except (OSError, ValueError, KeyError):  # a broken kernelspec directory must not stop the book
        specs = {}
    for name, spec in sorted(specs.items()):
        argv = spec.get("spec", {}).get("argv") or [""]
        exe = shutil.which(argv[0]) or argv[0]
        if spec.get("spec", {}).get("language") == "python" and os.path.realpath(exe) == here:
            return name
    return "python3"


def plan_parameters(notebooks, profile: str, overrides: dict) -> dict:
    """Per notebook, the papermill parameters: ``profile`` and the overrides it declares.

    An override that no selected notebook declares is a ``ValueError`` (a typo would otherwise be
    ignored silently); so is a notebook without a ``profile`` parameter.
    """
    check_profile(profile)
    plan, used = {}, set()
    for path in notebooks:
        names = parameter_names(path)
        if "profile" not in names:
            raise ValueError(f"notebook {path} has no 'profile' parameter in its parameters cell")
        own = {k: v for k, v in overrides.items() if k in names}
        used |= set(own)
        plan[path] = {"profile": profile, **own}
    unused = sorted(set(overrides) - used)
    if unused:
        raise ValueError(f"parameter(s) {', '.join(map(repr, unused))} are not declared by any selected "
                         f"notebook's parameters cell")
    return plan


def partial_path(out_path) -> Path:
    """The hidden temp file an executed copy is written to before it is renamed to ``out_path``."""
    out_path = Path(out_path)
    return out_path.with_name(f".{out_path.stem}.partial{out_path.suffix}")


def execute(path, out_path, parameters: dict, kernel: str, cwd) -> tuple:
    """Run one notebook with papermill; returns (ok, seconds, error line).

    papermill writes to :func:`partial_path`, renamed to ``out_path`` once it is done: a copy whose
    run completed (a cell that raised included, its error shown) replaces the previous one; a run that
    did not complete (a dead kernel, an unreadable notebook, a kill) leaves the previous copy as it was.
    """
    import papermill

    start, partial = time.time(), partial_path(out_path)
    partial.unlink(missing_ok=True)  # left by a killed run
    try:
        try:
            papermill.execute_notebook(str(path), str(partial), parameters=parameters, kernel_name=kernel,
                                       cwd=str(cwd), progress_bar=False, log_output=False)
            outcome = True, time.time() - start, ""
        except papermill.PapermillExecutionError as e:
            outcome = False, time.time() - start, f"{e.ename}: {e.evalue}".strip()
        place_injected_parameters_first(partial)
        os.replace(partial, out_path)
        return outcome
    except Exception as e:  # noqa: BLE001 -- a dead kernel or an unreadable notebook: report, run the next
        return False, time.time() - start, f"{type(e).__name__}: {e}".splitlines()[0]
    finally:
        partial.unlink(missing_ok=True)


INJECTED_NOTE = ("# papermill's values for this run (above the parameters cell, so that when you run this "
                 "notebook yourself,\n# in Colab or Jupyter, the parameters cell below is the one that counts)\n")


def place_injected_parameters_first(path) -> bool:
    """Move papermill's injected-parameters cell of the executed copy ``path`` from after the cell
    tagged ``parameters`` to just before it, with a note. The outputs are those of the injected values
    (they ran as they did); a reader who opens the copy in Colab and edits ``parameters`` gets those
    edits. True if the copy was changed."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    tags = [c.metadata.get("tags", []) for c in nb.cells]
    params = next((i for i, t in enumerate(tags) if "parameters" in t), None)
    injected = next((i for i, t in enumerate(tags) if "injected-parameters" in t), None)
    if params is None or injected is None or injected < params:
        return False
    cell = nb.cells.pop(injected)
    if not cell.source.startswith(INJECTED_NOTE):
        cell.source = INJECTED_NOTE + cell.source
    nb.cells.insert(params, cell)
    nbformat.write(nb, str(path))
    return True


KEPT_METADATA = ("papermill", "execution")  # what papermill recorded about running a cell


def refresh_prose(executed_path, source_path) -> bool:
    """Copy the prose of ``source_path`` (a notebook in ``notebooks/``) into its executed copy
    ``executed_path``, without running anything: every Markdown cell's text and every cell's metadata
    (the figure captions of ``mystnb``, tags) from the source, the outputs and papermill's records
    (:data:`KEPT_METADATA`, the injected parameters cell) as they ran. The code cells must be the ones
    that ran: otherwise a ``ValueError`` (rerun the notebook instead). The copy is replaced atomically.
    True if it changed."""
    import nbformat

    executed_path, source = Path(executed_path), nbformat.read(str(source_path), as_version=4)
    nb = nbformat.read(str(executed_path), as_version=4)
    ran = [c for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    same = len(ran) == len(source.cells) and all(
        a.cell_type == b.cell_type and (a.cell_type != "code" or a.source == b.source)
        for a, b in zip(ran, source.cells))
    if not same:
        raise ValueError(f"{executed_path} did not run the code of {source_path}: rerun it "
                         f"(python -m repairlib book --only {executed_path.stem})")
    changed = False
    for cell, new in zip(ran, source.cells):
        kept = {k: cell.metadata[k] for k in KEPT_METADATA if k in cell.metadata}
        if "tags" not in new.metadata and cell.metadata.get("tags") == []:
            kept["tags"] = []  # papermill gives every cell a tag list
        metadata = {**new.metadata, **kept}
        if cell.metadata != metadata or (cell.cell_type != "code" and cell.source != new.source):
            changed = True
            cell.metadata = nbformat.from_dict(metadata)
            if cell.cell_type != "code":
                cell.source = new.source
    if changed:
        tmp = partial_path(executed_path)
        nbformat.write(nb, str(tmp))
        os.replace(tmp, executed_path)
    return changed


def previous_seconds(executed_path) -> float:
    """Wall time papermill recorded in an executed copy (``metadata.papermill.duration``); infinity
    when there is none, so that a notebook never timed counts as a long one."""
    import nbformat

    try:
        duration = nbformat.read(str(executed_path), as_version=4).metadata["papermill"]["duration"]
        return float(duration) if duration is not None else float("inf")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return float("inf")


def run_notebooks(notebooks, profile: str, overrides: dict, out_dir, cwd=None, kernel=None, log=print,
                  jobs: int = 1, earlier=None) -> list:
    """Execute ``notebooks`` into ``out_dir``, one progress line each; keeps going past failures.

    ``jobs`` > 1 runs that many notebooks side by side (each kernel then gets ``cores // jobs`` torch
    threads through ``OMP_NUM_THREADS``, unless it is set): the kernels' start-up and imports, which
    use one core, overlap with another notebook's work, and the checkpoint zoo's lock makes a network
    that two notebooks need train once; the longest notebooks (by their executed copies in ``earlier``,
    default ``out_dir``, from the previous run) start first. Returns ``[(name, seconds, ok, error)]`` in the given order.
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer, got {jobs!r}")
    plan = plan_parameters(notebooks, profile, overrides)
    jobs = min(jobs, max(len(notebooks), 1))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kernel = kernel or kernel_name()
    results = {}

    def report(path, outcome):
        results[path] = report_outcome(path, outcome, len(results) + 1, len(notebooks), log)

    with kernel_environment(jobs):
        if jobs == 1:
            for path in notebooks:
                report(path, execute(path, out_dir / path.name, plan[path], kernel, cwd or path.parent))
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed

            # longest first (by the wall time of the previous executed copy), so that the run does not
            # end with one long notebook working alone on its share of the cores
            earlier = Path(earlier) if earlier is not None else out_dir
            order = sorted(notebooks, key=lambda path: -previous_seconds(earlier / path.name))
            with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = {pool.submit(execute, path, out_dir / path.name, plan[path], kernel,
                                       cwd or path.parent): path for path in order}
                for future in as_completed(futures):
                    try:
                        outcome = future.result()
                    except Exception as e:  # noqa: BLE001 -- a worker died: report it, keep the others
                        outcome = (False, float("nan"), f"{type(e).__name__}: {e}".splitlines()[0])
                    report(futures[future], outcome)
    return [results[path] for path in notebooks]


def report_outcome(path, outcome, done: int, total: int, log) -> tuple:
    """Log one progress line for an executed notebook; returns ``(name, seconds, ok, error)``."""
    ok, seconds, error = outcome
    log(f"[{done}/{total}] {path.stem:<26} {seconds:8.1f} s  {'ok' if ok else 'FAILED'}"
        + (f"  ({error})" if error else ""))
    return path.stem, seconds, ok, error


@contextlib.contextmanager
def kernel_environment(jobs: int = 1):
    """The environment the runner's kernels inherit, restored afterwards: no progress bars
    (``TQDM_DISABLE``), results recorded in the book (``REPAIR_RESULTS``, unless set), evaluations
    cached beside the checkpoint zoo (``REPAIR_EVAL_CACHE``: ``<zoo>/evaluations`` unless set; set to
    "" for none, :mod:`repairlib.evalcache`), and with ``jobs`` kernels side by side ``cores // jobs``
    threads each (``OMP_NUM_THREADS``, unless set)."""
    from repairlib import evalcache, zoo

    env = {"TQDM_DISABLE": "1", "REPAIR_RESULTS": os.environ.get("REPAIR_RESULTS") or str(book_results_dir()),
           evalcache.ENV: os.environ.get(evalcache.ENV, str(zoo.resolve_cache_dir() / "evaluations"))}
    if jobs > 1 and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def build_book(root=None, path_output=None, log=print) -> bool:
    """``jupyter-book build`` of ``root`` (into ``path_output/_build`` if given); True on success."""
    root = Path(root) if root is not None else book_root()
    exe = shutil.which("jupyter-book")
    cmd = [exe] if exe else [sys.executable, "-c", "from jupyter_book.cli.main import main; main()"]
    cmd += ["build", str(root)] + (["--path-output", str(path_output)] if path_output else [])
    start = time.time()
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    ok = proc.returncode == 0
    html = Path(path_output or root) / "_build" / "html" / "index.html"
    log(f"jupyter-book build: {'ok' if ok else 'FAILED'} in {time.time() - start:.1f} s -> {html}")
    if not ok:
        log((proc.stdout + proc.stderr)[-3000:])
    return ok


def executed_dir(profile: str, root=None) -> Path:
    """Where the runner writes executed copies: ``book/executed/<profile>/`` (the book's pages are the
    cpu ones; paper-profile copies are kept beside them), smoke copies under ``_build/`` (never committed)."""
    root = Path(root) if root is not None else book_root()
    check_profile(profile)
    return root / "_build" / "executed" / "smoke" if profile == "smoke" else root / "book" / "executed" / profile


def parse_overrides(pairs) -> dict:
    """``-p NAME VALUE`` pairs -> ``{name: value}`` (values by :func:`parse_value`); a name that is not a
    Python identifier is a ``ValueError``."""
    overrides = {}
    for name, value in pairs:
        if not name.isidentifier():
            raise ValueError(f"parameter name {name!r} is not a Python identifier")
        overrides[name] = parse_value(value)
    return overrides


def check_out_dir(out_dir, notebook_dir) -> None:
    """``ValueError`` before any notebook runs when the executed copies would replace the source
    notebooks (``--out`` is ``--notebooks``) or cannot be written in ``out_dir``."""
    from repairlib.zoo import check_writable_dir

    if Path(out_dir).resolve() == Path(notebook_dir).resolve():
        raise ValueError(f"--out {out_dir} is the notebook directory: the executed copies would replace the "
                         "source notebooks; choose another directory")
    check_writable_dir(out_dir, f"--out {out_dir}")


def run_book(profile: str, only=None, overrides=None, no_build: bool = False, notebooks=None, out=None,
             kernel=None, jobs: int = 2, log=print, execute_notebooks=None) -> dict:
    """Execute the notebooks at ``profile``, refresh the results page, build the book; one line to ``log``
    per step. Every notebook is attempted, failing or not.

    ``only``: section ids or notebook stems (:func:`select_notebooks`); ``overrides``: papermill
    parameters (:func:`plan_parameters`); ``notebooks``: the source directory (default ``notebooks/``);
    ``out``: where the executed copies go (default :func:`executed_dir`). Returns ``{"profile",
    "out_dir", "executed": {name: {"seconds", "ok", "error"}}, "failed": [name], "seconds" (the whole
    run's wall time), "built" (None with ``no_build``), "ok" (no notebook failed, no build failed)}``.
    ``execute_notebooks(notebooks, profile, overrides, out_dir, cwd=, kernel=, log=)`` runs them
    elsewhere (:mod:`repairlib.book.cluster`: one GPU each, or submitit jobs); default
    :func:`run_notebooks` with ``jobs`` side by side.
    """
    check_profile(profile)
    start = time.time()
    root = book_root()
    notebook_dir = Path(notebooks or root / "notebooks")
    out_dir = Path(out or executed_dir(profile, root))
    chosen = select_notebooks(notebook_dir, only)
    check_out_dir(out_dir, notebook_dir)
    plan_parameters(chosen, profile, overrides or {})  # a bad override: refused before the first line of progress
    log(f"book: {len(chosen)} notebook(s) at profile {profile} -> {out_dir}")
    if execute_notebooks is None:
        results = run_notebooks(chosen, profile, overrides or {}, out_dir, cwd=notebook_dir, kernel=kernel,
                                log=log, jobs=jobs)
    else:
        with kernel_environment():
            results = execute_notebooks(chosen, profile, overrides or {}, out_dir, cwd=notebook_dir, kernel=kernel,
                                        log=log)
    failed = [name for name, _, ok, _ in results if not ok]
    log(f"book: {len(results) - len(failed)} ok, {len(failed)} failed in {time.time() - start:.0f} s"
        + (f" (failed: {', '.join(failed)})" if failed else ""))
    built = None
    if not no_build:
        write_results_page()
        built = build_book(root, log=log)
    return {"profile": profile, "out_dir": out_dir,
            "executed": {name: {"seconds": seconds, "ok": ok, "error": error} for name, seconds, ok, error in results},
            "failed": failed, "seconds": round(time.time() - start, 1), "built": built,
            "ok": not failed and built is not False}

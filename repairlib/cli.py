"""Command line: ``python -m repairlib {train,merge,book} ...``.

Each subcommand's handler returns its result (a dict); only :func:`main` prints. Every failure the
user can cause (bad names, missing or corrupt data, corrupt or non-finite checkpoints, an ``--out``
that is unwritable or would replace an input) is reported as one line on stderr with exit status 2,
never a traceback, and is found before the work starts wherever it can be. ``--json`` prints valid
JSON: NaN and Inf become ``null``.
"""

import argparse
import contextlib
import io
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

import torch

from repairlib.correction import CORRECTIONS
from repairlib.pipeline import ALIGNMENTS
from repairlib.points import SCOPES


class UserError(Exception):
    """An error caused by the user's input; the CLI prints its message alone."""


# ---------------------------------------------------------------- train
def _number(text: str):
    """An int where ``text`` is one ("4"), else a float ("0.5"): a width is a channel multiplier."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def _add_train(sub):
    p = sub.add_parser("train", help="train one network and save a checkpoint")
    p.add_argument("--arch", required=True, help="mlp | vgg | resnet20 | resnet18")
    p.add_argument("--depth", type=int, default=None)
    p.add_argument("--width", type=_number, default=None, help="mlp: hidden units; vgg, resnet: a channel "
                   "multiplier (0.5 halves every layer)")
    p.add_argument("--norm", default=None, help="bn | ln | fixup | none")
    p.add_argument("--dataset", required=True)
    p.add_argument("--data-root", default=None)
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--train-subset", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--out", required=True)
    p.add_argument("--json", action="store_true", help="print one JSON line of results")
    p.set_defaults(func=train_command)


def train_command(args) -> dict:
    """``train``: train one network, save it to ``--out``; its test metrics."""
    from repairlib import distributed, zoo

    config = {"arch": args.arch}
    config.update({k: getattr(args, k) for k in ("depth", "width", "norm") if getattr(args, k) is not None})
    for name in ("epochs", "train_subset"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    out = zoo.check_save_path(args.out, what="--out")
    desc = zoo.training_description(config, args.dataset, epochs=args.epochs, seed=args.seed,
                                    train_subset=args.train_subset)  # bad arch/width/data set: fail before work
    model, meta = zoo.train_model(desc, root=args.data_root, device=args.device)
    if distributed.is_main():  # under torchrun every rank holds the same weights; one writes them
        zoo.save(model, out, desc["config"], meta)
    distributed.barrier()
    keys = ("test_accuracy", "test_loss", "train_loss", "seconds", "images_per_second", "epochs", "seed")
    return {**{k: meta[k] for k in keys}, "dataset": meta["dataset"], "out": str(out)}


# ---------------------------------------------------------------- merge
def _add_merge(sub):
    p = sub.add_parser("merge", help="align, interpolate and correct two or more checkpoints")
    p.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help="two or more (A.pt B.pt [C.pt ...])")
    p.add_argument("--alpha", type=float, default=None, help="two checkpoints: (1 - alpha) A + alpha B (0.5)")
    p.add_argument("--weights", type=float, nargs="+", default=None, metavar="W",
                   help="one weight per checkpoint (normalised to sum 1; default equal)")
    p.add_argument("--align", default="activation", choices=ALIGNMENTS)
    p.add_argument("--correct", default="repair", choices=CORRECTIONS)
    p.add_argument("--scope", default="conv", choices=SCOPES)
    p.add_argument("--dataset", required=True)
    p.add_argument("--data-root", default=None)
    p.add_argument("--stats-examples", type=int, default=5000)
    p.add_argument("--device", default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--json", action="store_true")
    p.add_argument("--allow-nonfinite", action="store_true",
                   help="merge checkpoints holding NaN or Inf weights anyway; only with --align none --correct "
                        "none (plain interpolation): alignment and REPAIR need finite weights, and "
                        "repairlib.merge refuses them")
    p.set_defaults(func=merge_command)


def _check_runs(model, data, path: str, dataset: str):
    """A clear error when the network cannot take the data set's inputs (channels, size, classes)."""
    from repairlib.plumbing import first_inputs

    x = first_inputs(data)
    try:
        with torch.no_grad(), _quiet_stderr():
            model.eval()(x[:2])
    except RuntimeError as e:
        raise ValueError(f"the network in {path} cannot run on {dataset} images of shape {tuple(x.shape[1:])} "
                         f"({str(e).splitlines()[0]}); pass the --dataset it was trained on") from e


@contextlib.contextmanager
def _quiet_stderr():
    """Hold back what the block writes to stderr (torch.fx prints the traceback of a failing traced
    module there): written out after a block that succeeds, dropped after one that raises, whose
    error is then the one line the user sees."""
    held = io.StringIO()
    with contextlib.redirect_stderr(held):
        yield
    sys.stderr.write(held.getvalue())


def _load_all(args, device) -> list:
    """The checkpoints of ``merge``, one architecture, finite unless ``--allow-nonfinite``."""
    from repairlib import zoo
    from repairlib.plumbing import check_same_architecture

    nonfinite = "warn" if args.allow_nonfinite else "error"
    try:
        models = [zoo.load(p, device=device, nonfinite=nonfinite) for p in args.checkpoints]
    except zoo.NonFiniteError as e:
        raise ValueError(f"{e}; merge refuses non-finite networks (pass --allow-nonfinite with --align none "
                         "--correct none to interpolate them anyway)") from e
    for path, model in zip(args.checkpoints[1:], models[1:]):
        try:
            check_same_architecture(models[0], model)
        except ValueError as e:
            raise ValueError(f"{args.checkpoints[0]} and {path}: {e}") from e
    return models


def _names(n: int) -> list:
    """Result keys of the input networks: a, b, c, ... (then m27, m28, ...)."""
    return [chr(ord("a") + i) if i < 26 else f"m{i + 1}" for i in range(n)]


def _check_merge_args(args) -> None:
    """The ``merge`` options that can be checked before any file is read."""
    from repairlib import zoo
    from repairlib.plumbing import check_alpha

    if args.stats_examples < 1:
        raise ValueError(f"--stats-examples must be positive, got {args.stats_examples}")
    if len(args.checkpoints) < 2:
        raise ValueError(f"merge needs two or more checkpoints, got {len(args.checkpoints)}")
    if args.alpha is not None:
        check_alpha(args.alpha)
        if args.weights is not None or len(args.checkpoints) > 2:
            raise ValueError("--alpha is for two checkpoints without --weights; give --weights W1 W2 ... instead")
    if args.weights is not None and len(args.weights) != len(args.checkpoints):
        raise ValueError(f"--weights needs one weight per checkpoint: {len(args.checkpoints)} checkpoints, "
                         f"{len(args.weights)} weights")
    if args.allow_nonfinite and (args.align, args.correct) != ("none", "none"):
        raise ValueError(f"--allow-nonfinite works only with --align none --correct none (got --align {args.align} "
                         f"--correct {args.correct}): alignment and REPAIR need finite weights")
    if args.out:
        zoo.check_save_path(args.out, inputs=args.checkpoints, what="--out")


def check_savable(merged, model):
    """A checkpoint is rebuilt from its config: the merged network must have the same tensors."""
    extra = sorted(merged.state_dict().keys() - model.state_dict().keys())
    if extra:
        raise ValueError(f"cannot save the merged network with --out: REPAIR added {extra[0]!r} "
                         f"({len(extra)} tensors in all), which its architecture config cannot hold "
                         "(residual-stream corrections of --scope all, or biases of bias-free layers that no "
                         "BatchNorm follows); run without --out, or with --scope conv on a BatchNorm network")


def merge_command(args) -> dict:
    """``merge``: load the checkpoints, :func:`repairlib.merge` two of them (or :func:`repairlib.merge_many`
    N, with ``--weights``), evaluate every input and the result on the test split (and save it to ``--out``)."""
    from repairlib import data as datasets
    from repairlib import zoo
    from repairlib.evaluation import evaluate
    from repairlib.interpolation import average, check_weights
    from repairlib.pipeline import merge, merge_many
    from repairlib.plumbing import default_device

    _check_merge_args(args)
    device = default_device(args.device)
    models = _load_all(args, device)
    weights = check_weights(args.weights, len(models)) if args.weights is not None or len(models) > 2 else None
    train = datasets.loader(args.dataset, "train", subset=args.stats_examples, root=args.data_root,
                            device=device)
    test = datasets.loader(args.dataset, "test", root=args.data_root, device=device)
    _check_runs(models[0], test, args.checkpoints[0], args.dataset)
    alpha = 0.5 if args.alpha is None else args.alpha
    options = {"align": args.align, "correct": args.correct, "scope": args.scope}
    start = time.perf_counter()
    with _quiet_stderr():
        if args.allow_nonfinite:  # plain interpolation (--align none --correct none)
            merged = average(models, weights if weights is not None else [1 - alpha, alpha])
        elif weights is None:
            merged = merge(*models, train, alpha, **options)
        else:
            merged = merge_many(models, train, weights=weights, **options)
    seconds = {"merge": time.perf_counter() - start}
    if args.out:
        check_savable(merged, models[0])  # before the evaluation: an unsavable result is known now
    start = time.perf_counter()
    named = [*zip(_names(len(models)), models), ("merged", merged)]
    scores = {name: evaluate(m, test) for name, m in named}
    seconds["evaluate"] = time.perf_counter() - start
    result = {**({"alpha": alpha} if weights is None else {"weights": [float(w) for w in weights]}),
              **options, "dataset": args.dataset, "stats_examples": args.stats_examples}
    for name, score in scores.items():
        result.update({f"{name}_accuracy": score["accuracy"], f"{name}_loss": score["loss"]})
    result.update({f"seconds_{k}": round(v, 3) for k, v in seconds.items()})
    if args.out:
        zoo.save(merged, args.out, zoo.load_checkpoint(args.checkpoints[0])["config"],
                 meta={k: v for k, v in result.items() if not k.startswith("seconds")})
        result["out"] = args.out
    return result


# ---------------------------------------------------------------- book
def _add_book(sub):
    p = sub.add_parser("book", help="execute the notebooks with papermill and build the book")
    p.add_argument("--profile", default="cpu", choices=["smoke", "cpu", "paper"])
    p.add_argument("--only", nargs="+", default=None, metavar="SECTION")
    p.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    p.add_argument("--no-build", action="store_true", help="execute the notebooks but skip jupyter-book")
    p.add_argument("--notebooks", default=None, metavar="DIR", help="source notebooks (default: notebooks/)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="where the executed copies go (default: book/executed/<profile>/)")
    p.add_argument("--kernel", default=None, help="Jupyter kernel name (default: the one running this Python)")
    p.add_argument("--no-eval-cache", action="store_true",
                   help="evaluate every network afresh (default: results of networks and test data evaluated "
                        "before are read from <zoo>/evaluations, repairlib.evalcache)")
    p.add_argument("--refresh-prose", action="store_true",
                   help="run nothing: copy the Markdown and the figure captions of notebooks/ into the executed "
                        "copies of the profile whose code cells are unchanged, then build the book")
    p.add_argument("--jobs", type=int, default=2, metavar="N",
                   help="notebooks run side by side, each with cores/N torch threads (default 2; 1 runs them "
                        "one after another)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--devices", default=None, metavar="cuda:0,cuda:1,...",
                       help="run notebooks side by side, one GPU each")
    where.add_argument("--cluster", default=None, choices=["slurm", "local"],
                       help="submit each notebook as a submitit job (Slurm, or local processes)")
    p.add_argument("--cluster-option", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="a submitit executor parameter, e.g. slurm_partition gpu or gpus_per_node 1")
    p.add_argument("--cluster-folder", default="_build/jobs", metavar="DIR", help="submitit's job logs")
    p.set_defaults(func=book_command)


def book_command(args) -> int:
    """``book``: run the notebooks (here, one GPU each, or as cluster jobs) and build the book; progress
    lines on stdout as it goes. Exit status 0 when every notebook and the build succeeded, else 1."""
    import functools

    from repairlib import evalcache
    from repairlib.book import cluster, runner

    if args.refresh_prose:
        return refresh_prose_command(args)
    if args.no_eval_cache:
        os.environ[evalcache.ENV] = ""
    execute_notebooks = None
    if args.devices:
        execute_notebooks = functools.partial(cluster.run_on_devices, devices=cluster.parse_devices(args.devices))
    elif args.cluster:
        options = runner.parse_overrides(args.cluster_option)
        execute_notebooks = functools.partial(cluster.submit_notebooks, folder=Path(args.cluster_folder).resolve(),
                                              cluster=args.cluster, options=options)
    summary = runner.run_book(args.profile, only=args.only, overrides=runner.parse_overrides(args.parameter),
                              no_build=args.no_build, notebooks=args.notebooks, out=args.out, kernel=args.kernel,
                              jobs=args.jobs, log=functools.partial(print, flush=True),
                              execute_notebooks=execute_notebooks)
    return 0 if summary["ok"] else 1


def refresh_prose_command(args) -> int:
    """``book --refresh-prose``: :func:`repairlib.book.runner.refresh_prose` for every executed copy of the
    profile (``--only`` narrows them), one line each, then the results page and the build (unless
    ``--no-build``). Exit status 1 when a copy ran other code than its source (it is left as it was)."""
    from repairlib.book import results, runner

    notebook_dir = Path(args.notebooks or results.book_root() / "notebooks")
    out_dir = Path(args.out or runner.executed_dir(args.profile))
    failed = 0
    for source in runner.select_notebooks(notebook_dir, args.only):
        executed = out_dir / source.name
        if not executed.exists():
            print(f"{source.stem}: no executed copy in {out_dir}", flush=True)
            continue
        try:
            print(f"{source.stem}: {'refreshed' if runner.refresh_prose(executed, source) else 'unchanged'}",
                  flush=True)
        except ValueError as e:
            failed += 1
            print(f"{source.stem}: {e}", flush=True)
    if not args.no_build:
        results.write_results_page()
        failed += runner.build_book() is False
    return 1 if failed else 0


# ---------------------------------------------------------------- entry point
def parser():
    p = argparse.ArgumentParser(prog="python -m repairlib", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_merge(sub)
    _add_book(sub)
    return p


def json_safe(value):
    """``value`` with every NaN or Inf float (also inside lists and dicts) replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def emit(result: dict, as_json: bool) -> None:
    """Print a result dict: one line of valid JSON with --json (NaN/Inf as null), else aligned key: value lines."""
    if as_json:
        print(json.dumps(json_safe(result), sort_keys=True, allow_nan=False))
    else:
        for key, value in result.items():
            print(f"{key:>24}: {value}")


def _one_line(err: Exception) -> str:
    """An error as one line: a KeyError's message, an OSError's file and reason, else its first line."""
    if isinstance(err, KeyError) and err.args:
        text = str(err.args[0])
    elif isinstance(err, OSError) and err.filename and err.strerror:
        text = f"{err.filename}: {err.strerror}"
    else:
        text = str(err) or type(err).__name__
    return " ".join(text.split())


@contextlib.contextmanager
def _one_line_warnings():
    """Warnings printed as one ``warning: ...`` line each on stderr, without the source line."""
    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *_, **__: print(f"warning: {message}", file=sys.stderr)
        yield


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        with _one_line_warnings():
            result = args.func(args)
    except (UserError, ValueError, OSError, KeyError) as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    if isinstance(result, dict):
        emit(result, getattr(args, "json", False))
        return 0
    return result or 0

"""Command line: ``python -m repairlib {train,merge,book} ...``.

Each subcommand's handler returns its result (a dict); only :func:`main` prints. Every failure the
user can cause (bad names, missing data, corrupt checkpoints) is reported as one line on stderr with
exit status 2, never a traceback.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from repairlib.correction import CORRECTIONS
from repairlib.pipeline import ALIGNMENTS
from repairlib.points import SCOPES


class UserError(Exception):
    """An error caused by the user's input; the CLI prints its message alone."""


# ---------------------------------------------------------------- train
def _add_train(sub):
    p = sub.add_parser("train", help="train one network and save a checkpoint")
    p.add_argument("--arch", required=True, help="mlp | vgg | resnet20 | resnet18")
    p.add_argument("--depth", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
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
    from repairlib import zoo

    config = {"arch": args.arch}
    config.update({k: getattr(args, k) for k in ("depth", "width", "norm") if getattr(args, k) is not None})
    for name in ("epochs", "train_subset"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    out = Path(args.out)
    if out.is_dir():
        raise ValueError(f"--out {out} is a directory; give a file name such as {out / 'model.pt'}")
    desc = zoo.training_description(config, args.dataset, epochs=args.epochs, seed=args.seed,
                                    train_subset=args.train_subset)  # bad arch/width/data set: fail before work
    model, meta = zoo.train_model(desc, root=args.data_root, device=args.device)
    zoo.save(model, out, desc["config"], meta)
    keys = ("test_accuracy", "test_loss", "train_loss", "seconds", "images_per_second", "epochs", "seed")
    return {**{k: meta[k] for k in keys}, "dataset": meta["dataset"], "out": str(out)}


# ---------------------------------------------------------------- merge
def _add_merge(sub):
    p = sub.add_parser("merge", help="align, interpolate and correct two checkpoints")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--align", default="activation", choices=ALIGNMENTS)
    p.add_argument("--correct", default="repair", choices=CORRECTIONS)
    p.add_argument("--scope", default="conv", choices=SCOPES)
    p.add_argument("--dataset", required=True)
    p.add_argument("--data-root", default=None)
    p.add_argument("--stats-examples", type=int, default=5000)
    p.add_argument("--device", default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=merge_command)


def _check_runs(model, data, what: str, dataset: str):
    """A clear error when the network cannot take the data set's inputs (channels, classes)."""
    from repairlib.plumbing import first_inputs

    x = first_inputs(data)
    try:
        with torch.no_grad():
            model.eval()(x[:2])
    except RuntimeError as e:
        raise ValueError(f"{what} cannot run on {dataset} inputs of shape {tuple(x.shape[1:])}: "
                         f"{str(e).splitlines()[0]}") from e


def check_savable(merged, model):
    """A checkpoint is rebuilt from its config: the merged network must have the same tensors."""
    extra = sorted(merged.state_dict().keys() - model.state_dict().keys())
    if extra:
        raise ValueError(f"cannot save the merged network with --out: REPAIR added {extra[0]!r} "
                         f"({len(extra)} tensors in all), which its architecture config cannot hold "
                         "(residual-stream corrections of --scope all, or biases of bias-free layers that no "
                         "BatchNorm follows); run without --out, or with --scope conv on a BatchNorm network")


def merge_command(args) -> dict:
    """``merge``: load two checkpoints, :func:`repairlib.merge` them, evaluate A, B and the result on the
    test split (and save it to ``--out``)."""
    from repairlib import data as datasets
    from repairlib import zoo
    from repairlib.evaluation import evaluate
    from repairlib.pipeline import merge
    from repairlib.plumbing import check_alpha, check_same_architecture, default_device

    if args.stats_examples < 1:
        raise ValueError(f"--stats-examples must be positive, got {args.stats_examples}")
    check_alpha(args.alpha)
    device = default_device(args.device)
    model_a, model_b = zoo.load(args.a).to(device), zoo.load(args.b).to(device)
    check_same_architecture(model_a, model_b)
    train = datasets.loader(args.dataset, "train", subset=args.stats_examples, root=args.data_root,
                            device=device)
    test = datasets.loader(args.dataset, "test", root=args.data_root, device=device)
    _check_runs(model_a, test, args.a, args.dataset)
    start = time.perf_counter()
    merged = merge(model_a, model_b, train, args.alpha, align=args.align, correct=args.correct, scope=args.scope)
    seconds = {"merge": time.perf_counter() - start}
    start = time.perf_counter()
    scores = {name: evaluate(m, test) for name, m in (("a", model_a), ("b", model_b), ("merged", merged))}
    seconds["evaluate"] = time.perf_counter() - start
    result = {"alpha": args.alpha, "align": args.align, "correct": args.correct, "scope": args.scope,
              "dataset": args.dataset, "stats_examples": args.stats_examples}
    for name, score in scores.items():
        result.update({f"{name}_accuracy": score["accuracy"], f"{name}_loss": score["loss"]})
    result.update({f"seconds_{k}": round(v, 3) for k, v in seconds.items()})
    if args.out:
        check_savable(merged, model_a)
        zoo.save(merged, args.out, zoo.load_checkpoint(args.a)["config"],
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
    p.add_argument("--jobs", type=int, default=2, metavar="N",
                   help="notebooks run side by side, each with cores/N torch threads (default 2; 1 runs them "
                        "one after another)")
    p.set_defaults(func=book_command)


def book_command(args) -> int:
    """``book``: run the notebooks and build the book (its runner reports progress as it goes)."""
    from repairlib.book import book_cli

    return book_cli(args)


# ---------------------------------------------------------------- entry point
def parser():
    p = argparse.ArgumentParser(prog="python -m repairlib", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_merge(sub)
    _add_book(sub)
    return p


def emit(result: dict, as_json: bool) -> None:
    """Print a result dict: one JSON line with --json, else aligned key: value lines."""
    if as_json:
        print(json.dumps(result, sort_keys=True))
    else:
        for key, value in result.items():
            print(f"{key:>24}: {value}")


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        result = args.func(args)
    except (UserError, ValueError, FileNotFoundError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
        return 2
    if isinstance(result, dict):
        emit(result, getattr(args, "json", False))
        return 0
    return result or 0

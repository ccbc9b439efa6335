"""Command line: ``python -m repairlib {train,merge,book} ...``.

Every failure the user can cause (bad names, missing data, corrupt checkpoints) is reported as one
line on stderr with exit status 2, never a traceback.
"""

import argparse
import json
import sys


class UserError(Exception):
    """An error caused by the user's input; the CLI prints its message alone."""


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
    p.set_defaults(func=_cmd_train)


def _add_merge(sub):
    p = sub.add_parser("merge", help="align, interpolate and correct two checkpoints")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--align", default="activation", choices=["activation", "weight", "none"])
    p.add_argument("--correct", default="repair", choices=["repair", "closed_form", "reset_bn", "none"])
    p.add_argument("--scope", default="conv", choices=["conv", "all"])
    p.add_argument("--dataset", required=True)
    p.add_argument("--data-root", default=None)
    p.add_argument("--stats-examples", type=int, default=5000)
    p.add_argument("--device", default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_merge)


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
    p.set_defaults(func=_cmd_book)


def _cmd_train(args):
    from repairlib.zoo import train_cli

    return train_cli(args)


def _cmd_merge(args):
    from repairlib.merge import merge_cli

    return merge_cli(args)


def _cmd_book(args):
    from repairlib.book import book_cli

    return book_cli(args)


def parser():
    p = argparse.ArgumentParser(prog="python -m repairlib", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_merge(sub)
    _add_book(sub)
    return p


def emit(result, as_json):
    """Print a result dict: one JSON line with --json, else aligned key: value lines."""
    if as_json:
        print(json.dumps(result, sort_keys=True))
    else:
        for key, value in result.items():
            print(f"{key:>24}: {value}")


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (UserError, ValueError, FileNotFoundError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
        return 2

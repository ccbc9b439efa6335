"""Merge two trained networks: align, interpolate, correct (``python -m repairlib merge A.pt B.pt``)."""

import time

import torch
from torch import nn

from repairlib.align import align as align_units
from repairlib.align import permute
from repairlib.interpolate import check_alpha, check_same_architecture, interpolate
from repairlib.metrics import evaluate
from repairlib.repair import first_inputs, repair, reset_bn

ALIGNMENTS = ("activation", "weight", "none")
CORRECTIONS = ("repair", "closed_form", "reset_bn", "none")


def merge(model_a: nn.Module, model_b: nn.Module, data, alpha: float = 0.5, align: str = "activation",
          correct: str = "repair", scope: str = "conv") -> tuple:
    """``(merged network, {"align": s, "correct": s})``: theta_alpha between ``model_a`` and ``model_b``
    aligned to it (``align``: activation / weight matching, or none), then corrected (``correct``: exact
    REPAIR, its closed form, a BatchNorm reset, or none) with statistics from ``data`` (training batches).
    """
    if align not in ALIGNMENTS:
        raise ValueError(f"align must be one of {', '.join(ALIGNMENTS)}, got {align!r}")
    if correct not in CORRECTIONS:
        raise ValueError(f"correct must be one of {', '.join(CORRECTIONS)}, got {correct!r}")
    alpha = check_alpha(alpha)
    check_same_architecture(model_a, model_b)
    start = time.perf_counter()
    stats = None
    if align != "none":
        # the alignment pass also gathers REPAIR's endpoint statistics (of the aligned B)
        repairing = correct in ("repair", "closed_form")
        perms = align_units(model_a, model_b, data, method=align, stats_scope=scope if repairing else None,
                            stats_cov=correct == "closed_form")  # the exact variant needs no covariance
        model_b, stats = permute(model_b, perms), perms.endpoint_stats
    aligned = time.perf_counter()
    merged = interpolate(model_a, model_b, alpha)
    if correct in ("repair", "closed_form"):
        variant = "exact" if correct == "repair" else "closed_form"
        merged = repair(merged, model_a, model_b, data, alpha, variant=variant, scope=scope, stats=stats)
    elif correct == "reset_bn":
        reset_bn(merged, data)
    return merged, {"align": aligned - start, "correct": time.perf_counter() - aligned}


def _check_runs(model: nn.Module, data, what: str, dataset: str):
    """A clear error when the network cannot take the data set's inputs (channels, classes)."""
    x = first_inputs(data)
    try:
        with torch.no_grad():
            model.eval()(x[:2])
    except RuntimeError as e:
        raise ValueError(f"{what} cannot run on {dataset} inputs of shape {tuple(x.shape[1:])}: "
                         f"{str(e).splitlines()[0]}") from e


def _check_savable(merged: nn.Module, model: nn.Module):
    """A checkpoint is rebuilt from its config: the merged network must have the same tensors."""
    extra = sorted(merged.state_dict().keys() - model.state_dict().keys())
    if extra:
        raise ValueError(f"cannot save the merged network with --out: REPAIR added {extra[0]!r} "
                         f"({len(extra)} tensors in all), which its architecture config cannot hold "
                         "(residual-stream corrections of --scope all, or biases of bias-free layers that no "
                         "BatchNorm follows); run without --out, or with --scope conv on a BatchNorm network")


def merge_cli(args) -> int:
    """The ``merge`` subcommand: load, merge, evaluate on the test split, print one result line."""
    from repairlib import data as datasets
    from repairlib import zoo
    from repairlib.cli import emit

    if args.stats_examples < 1:
        raise ValueError(f"--stats-examples must be positive, got {args.stats_examples}")
    check_alpha(args.alpha)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model_a, model_b = zoo.load(args.a).to(device), zoo.load(args.b).to(device)
    check_same_architecture(model_a, model_b)
    train = datasets.loader(args.dataset, "train", subset=args.stats_examples, root=args.data_root,
                            device=device)
    test = datasets.loader(args.dataset, "test", root=args.data_root, device=device)
    _check_runs(model_a, test, args.a, args.dataset)
    merged, seconds = merge(model_a, model_b, train, args.alpha, args.align, args.correct, args.scope)
    start = time.perf_counter()
    scores = {name: evaluate(m, test) for name, m in (("a", model_a), ("b", model_b), ("merged", merged))}
    seconds["evaluate"] = time.perf_counter() - start
    result = {"alpha": args.alpha, "align": args.align, "correct": args.correct, "scope": args.scope,
              "dataset": args.dataset, "stats_examples": args.stats_examples}
    for name, score in scores.items():
        result.update({f"{name}_accuracy": score["accuracy"], f"{name}_loss": score["loss"]})
    result.update({f"seconds_{k}": round(v, 3) for k, v in seconds.items()})
    if args.out:
        _check_savable(merged, model_a)
        zoo.save(merged, args.out, zoo.load_checkpoint(args.a)["config"],
                 meta={k: v for k, v in result.items() if not k.startswith("seconds")})
        result["out"] = args.out
    emit(result, args.json)
    return 0

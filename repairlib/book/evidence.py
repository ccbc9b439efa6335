"""Measurements with their uncertainty, noise-aware verdicts and the "Does it match the paper?" box.

A notebook records each claim of :data:`repairlib.book.coverage.CLAIMS` it measures, then shows the box::

    from repairlib.book import evidence
    ex = [{"a": per_example(a, test), "b": per_example(b, test), "merged": evidence.stack(curve)}]  # one per seed pair
    gap = lambda m: torch.minimum(m["a"]["loss"], m["b"]["loss"]) - m["merged"]["loss"].min(-1).values
    records = [evidence.measure("fig7", gap, ex, profile=profile, dataset=..., model=..., seeds=[(0, 1)])]
    book.save_results("5.4", profile, cfg, rows, start, measurements=records)
    Markdown(evidence.match_box(records, section="5.4"))

``per_example`` is :func:`repairlib.evaluation.per_example` (correct and loss per test image, ``[N]``);
a statistic maps the *means* of those arrays (each with a leading resample axis ``[B, ...]``) to
``[B]`` values. The uncertainty is twofold: the spread of the per-seed-pair values (mean, std,
min..max) and a paired bootstrap over test images (the same resampled images for every array and
every pair, ``n_boot = 1000`` resamples, fixed seed) of their mean over pairs. A verdict says
"reproduced" only when the 95% interval *and* every seed pair lie on the claimed side,
"differs" when both lie on the other side, and "not distinguishable" otherwise.
"""

from __future__ import annotations

import json
import math

import torch

from repairlib.book.coverage import claim, elsewhere_note, markdown_table, page_of, section_claims

N_BOOT = 1000
LEVEL = 0.95
VERDICTS = ("reproduced", "not distinguishable", "differs", "not measured yet")
_CHUNK = 200  # resamples per count matrix: [200, N] float64 (16 MB at N = 10,000)


# --- the bootstrap ---------------------------------------------------------------------------------

def stack(results: list) -> dict:
    """Per-example results of K networks (e.g. the K points of an interpolation curve) as one:
    ``{"correct": [K, N], "loss": [K, N]}``; a statistic then sees ``[B, K]`` means."""
    return {name: torch.stack([r[name] for r in results]) for name in results[0]}


def _tree(fn, tree):
    """``fn`` applied to every tensor of a nest of dicts and lists."""
    if isinstance(tree, dict):
        return {k: _tree(fn, v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_tree(fn, v) for v in tree]
    return fn(tree)


def _leaves(tree) -> list:
    out = []
    _tree(out.append, tree)
    return out


def n_examples(examples) -> int:
    """N, the number of test images of a nest of per-example arrays ``[..., N]`` (all must agree)."""
    sizes = {int(x.shape[-1]) for x in _leaves(examples)}
    if len(sizes) != 1 or 0 in sizes:
        raise ValueError(f"per-example arrays need one common, non-zero last dimension N, got {sorted(sizes)}")
    return sizes.pop()


def resample_counts(n: int, n_boot: int = N_BOOT, seed: int = 0):
    """Yield count matrices ``W [b, n]`` (float64, ``n_boot`` rows in all): ``W[j, i]`` = how often
    image i is drawn among the n draws with replacement of resample j. A resampled mean of an array
    ``x [n]`` is ``W @ x / n``. The same ``seed`` gives the same resamples."""
    gen = torch.Generator().manual_seed(seed)
    for start in range(0, n_boot, _CHUNK):
        b = min(_CHUNK, n_boot - start)
        idx = torch.randint(n, (b, n), generator=gen)
        yield torch.zeros(b, n, dtype=torch.float64).scatter_add_(1, idx, torch.ones(b, n, dtype=torch.float64))


def _means(examples, weights: torch.Tensor):
    """Weighted means ``x @ W.T / W.sum(1)`` of every array ``x [..., N]`` of ``examples``: ``[b, ...]``."""
    total = weights.sum(1)

    def mean(x):
        flat = x.reshape(-1, x.shape[-1]).double()
        return (weights @ flat.T / total[:, None]).reshape(len(weights), *x.shape[:-1])
    return _tree(mean, examples)


def _values(stat, pairs) -> list:
    """``stat`` on the whole test set, once per seed pair: ``[float]``."""
    out = []
    for examples in pairs:
        value = stat(_means(examples, torch.ones(1, n_examples(examples), dtype=torch.float64)))
        out.append(float(torch.as_tensor(value).reshape(-1)[0]))
    return out


def percentile_interval(samples: torch.Tensor, level: float = LEVEL) -> tuple:
    """``(low, high)``: the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of ``samples``."""
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    low, high = torch.quantile(samples.double(), q).tolist()
    return low, high


def bootstrap(stat, pairs, n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> dict:
    """A paired bootstrap over test images of ``stat``, averaged over seed pairs.

    ``pairs``: one nest of per-example arrays ``[..., N]`` per seed pair, on the same N test images in
    the same order (a single nest counts as one pair). ``stat(means) -> [B]``, where ``means`` mirrors
    the nest with each array replaced by its means ``[B, ...]``. With resample j drawing images
    ``i_1..i_N`` (the same for every array and every pair, hence paired):

        T_j = (1 / P) sum_p stat_p(mean over i_1..i_N),    interval = quantiles of T_1..T_n_boot

    Returns ``{"values": stat per pair on all images, "mean": their mean, "low", "high", "n_boot",
    "seed", "level", "n_test"}``.
    """
    pairs = [pairs] if isinstance(pairs, dict) else list(pairs)
    n = {n_examples(p) for p in pairs}
    if len(n) != 1:
        raise ValueError(f"every seed pair needs the same test images, got sizes {sorted(n)}")
    n = n.pop()
    samples = torch.cat([torch.stack([torch.as_tensor(stat(_means(p, w)), dtype=torch.float64).reshape(-1)
                                      for p in pairs]).mean(0) for w in resample_counts(n, n_boot, seed)])
    values = _values(stat, pairs)
    low, high = percentile_interval(samples, level)
    return {"values": values, "mean": sum(values) / len(values), "low": low, "high": high,
            "n_boot": n_boot, "seed": seed, "level": level, "n_test": n}


def bootstrap_mean(values: torch.Tensor, **kwargs) -> dict:
    """:func:`bootstrap` of the mean of one per-example array ``[N]`` (an accuracy, a loss), or of
    a list of them, one per seed pair: mean(x) with its interval."""
    pairs = [values] if torch.is_tensor(values) else list(values)
    return bootstrap(lambda m: m["x"], [{"x": x} for x in pairs], **kwargs)


def bootstrap_difference(a: torch.Tensor, b: torch.Tensor, **kwargs) -> dict:
    """Paired :func:`bootstrap` of mean(a) - mean(b), ``a`` and ``b`` per-example ``[N]`` on the same
    images (or lists of them, one per seed pair): the images are resampled together, so what both
    share (hard images) cancels."""
    a = [a] if torch.is_tensor(a) else list(a)
    b = [b] if torch.is_tensor(b) else list(b)
    return bootstrap(lambda m: m["a"] - m["b"], [{"a": x, "b": y} for x, y in zip(a, b, strict=True)], **kwargs)


def slope(xs, ys: torch.Tensor) -> torch.Tensor:
    """Least-squares slope of ``ys [..., K]`` over ``xs [K]``:
    sum_k (x_k - mean x)(y_k - mean y) / sum_k (x_k - mean x)^2, one per leading index."""
    x = torch.as_tensor(xs, dtype=torch.float64)
    if len(x) < 2 or float(((x - x.mean()) ** 2).sum()) == 0:
        raise ValueError(f"a slope needs at least two different x, got {x.tolist()}")
    dx = x - x.mean()
    return ((ys.double() - ys.double().mean(-1, keepdim=True)) * dx).sum(-1) / (dx ** 2).sum()


def trend(stat, xs):
    """A statistic for a sweep: examples are a list (one entry per x, in the order of ``xs``), ``stat``
    maps one entry's means to ``[B]``; the result is the slope of stat over ``xs`` (:func:`slope`), e.g.
    ``trend(barrier, [0, 1, 2])`` for widths x1, x2, x4 on a log2 axis."""
    return lambda m: slope(xs, torch.stack([torch.as_tensor(stat(one)) for one in m], -1))


def seed_spread(values) -> dict:
    """``{"n", "mean", "std", "min", "max"}`` of per-seed-pair values; ``std`` is the sample standard
    deviation sqrt(sum (v - mean)^2 / (n - 1)), ``None`` for a single pair."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("no values")
    n, mean = len(values), sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"n": n, "mean": mean, "std": std, "min": min(values), "max": max(values)}


# --- verdicts --------------------------------------------------------------------------------------

def fmt(value, unit: str, signed: bool = False) -> str:
    """A number as the pages print it: fractions in % (1 decimal), losses with 3 decimals, ratios
    with 3, slopes with 4, layer counts with 1; ``signed`` puts a + on positive values."""
    if value is None:
        return "–"
    scale, digits, suffix = {"fraction": (100, 1, "%"), "loss": (1, 3, ""), "ratio": (1, 3, ""),
                             "slope": (1, 4, ""), "layers": (1, 1, "")}[unit]
    text = f"{scale * value:{'+' if signed else ''}.{digits}f}{suffix}"
    return text.replace("-", "−")


def _signed(test: dict) -> bool:
    """Whether a claim's numbers are differences around 0 (printed with their sign)."""
    return test.get("than", test.get("of")) == 0


def _threshold(value: float, unit: str) -> str:
    return "0" if value == 0 else fmt(value, unit)


def criterion_text(test: dict, unit: str) -> str:
    """The test of a claim in a few characters: "> 0", "< 5.0%", "0 ± 0.5%"."""
    kind = test["kind"]
    if kind in ("greater", "less"):
        return f"{'>' if kind == 'greater' else '<'} {_threshold(test['than'], unit)}"
    if kind == "within":
        return f"{_threshold(test['of'], unit)} ± {fmt(test['tol'], unit)}"
    return kind


def _side(value: float, test: dict) -> int:
    """+1: ``value`` satisfies the test, -1: it fails it, 0: (within tests) neither decided here."""
    if test["kind"] == "greater":
        return 1 if value > test["than"] else -1
    if test["kind"] == "less":
        return 1 if value < test["than"] else -1
    return 1 if abs(value - test["of"]) <= test["tol"] else -1


def verdict(test: dict, low: float, high: float, values, unit: str = "ratio") -> tuple:
    """``(verdict, reason)`` of a measurement against a claim's ``test`` (:mod:`repairlib.book.coverage`).

    ``low``, ``high``: the bootstrap interval of the mean over seed pairs; ``values``: per seed pair.

    - greater than t: "reproduced" if low > t and every pair > t; "differs" if high < t and every
      pair < t; else "not distinguishable" (t lies inside the noise). "less than" mirrors it.
    - within v ± d: "reproduced" if [low, high] and every pair lie in [v - d, v + d]; "differs" if the
      interval and every pair lie outside it on one side; else "not distinguishable".
    - context, setting, shown: that word, no verdict.
    """
    kind, values = test["kind"], [float(v) for v in values]
    if kind not in ("greater", "less", "within"):
        return kind, {"context": "a number of prior work, not a claim of this paper",
                      "setting": "a setting of the experiments, not a result", "shown": "shown as a picture"}[kind]
    signed = _signed(test)
    interval = f"95% interval {fmt(low, unit, signed)} to {fmt(high, unit, signed)}"
    pairs = "the seed pair" if len(values) == 1 else f"all {len(values)} seed pairs"
    if kind == "within":
        lo, hi = test["of"] - test["tol"], test["of"] + test["tol"]
        if lo <= low and high <= hi and all(lo <= v <= hi for v in values):
            return "reproduced", f"{interval} and {pairs} inside {criterion_text(test, unit)}"
        if (high < lo and all(v < lo for v in values)) or (low > hi and all(v > hi for v in values)):
            return "differs", f"{interval} and {pairs} outside {criterion_text(test, unit)}"
        return "not distinguishable", f"{interval} or the seed pairs reach past {criterion_text(test, unit)}"
    t = test["than"]
    sides = {_side(v, test) for v in values}
    claimed = (low > t) if kind == "greater" else (high < t)
    opposite = (high < t) if kind == "greater" else (low > t)
    if claimed and sides == {1}:
        return "reproduced", f"{interval} and {pairs} {criterion_text(test, unit)}"
    if opposite and sides == {-1}:
        return "differs", f"{interval} and {pairs} on the other side of {_threshold(t, unit)}"
    if low <= t <= high:
        return "not distinguishable", f"{interval} holds {_threshold(t, unit)}: inside the noise of the test images"
    return "not distinguishable", (f"the seed pairs disagree ({fmt(min(values), unit, signed)} to "
                                   f"{fmt(max(values), unit, signed)}): inside the noise of training")


# --- records ---------------------------------------------------------------------------------------

def _plain(value):
    """``value`` as JSON-plain data (tuples become lists); ``ValueError`` for anything else."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as err:
        raise ValueError(f"a measurement record holds plain numbers and strings, got {value!r}") from err


def measure(key: str, stat, pairs, *, profile: str, dataset: str, model: str, seeds, n_boot: int = N_BOOT,
            seed: int = 0, **extra) -> dict:
    """The plain record of claim ``key`` (:data:`repairlib.book.coverage.CLAIMS`) measured by ``stat``
    on ``pairs`` (one nest of per-example arrays per seed pair, :func:`bootstrap`).

    ``seeds``: the seed pair behind each entry of ``pairs``; ``model``: a short name ("ResNet20 x1");
    ``extra``: further plain fields (``arch``, ``width``, ``depth``, ``norm``, ``alpha``, ``method``...).
    The record: ``key``, ``section``, ``page``, ``figure`` (e.g. "Fig. 3 middle", or None), ``what``,
    ``unit``, ``paper`` ({"value", "source", "claim"}), ``test``, ``values`` (per pair), ``mean``,
    ``std``, ``min``, ``max``, ``ci95`` ([low, high]), ``n_boot``, ``boot_seed``, ``profile``,
    ``dataset``, ``n_test``, ``seeds``, ``model``, the extras, ``verdict`` and ``reason``.
    """
    item = claim(key)
    pairs = [pairs] if isinstance(pairs, dict) else list(pairs)
    seeds = [list(s) for s in seeds]
    if len(seeds) != len(pairs):
        raise ValueError(f"{len(pairs)} seed pair(s) of examples but {len(seeds)} seed pair(s) named")
    boot = bootstrap(stat, pairs, n_boot=n_boot, seed=seed)
    spread = seed_spread(boot["values"])
    record = {
        "key": key, "section": item["section"], "page": page_of(item["section"]),
        "figure": item["source"] if item["figure"] is not None else None, "what": item["what"],
        "unit": item["unit"], "paper": {"value": item["paper"], "source": item["source"], "claim": item["claim"]},
        "test": item["test"], "values": boot["values"], "mean": spread["mean"], "std": spread["std"],
        "min": spread["min"], "max": spread["max"], "ci95": [boot["low"], boot["high"]], "n_boot": n_boot,
        "boot_seed": seed, "profile": profile, "dataset": dataset, "n_test": boot["n_test"], "seeds": seeds,
        "model": model, **extra,
    }
    record["verdict"], record["reason"] = judge(record)
    return _plain(record)


def judge(record: dict) -> tuple:
    """``(verdict, reason)`` of a measurement record against its claim's test, as of the current
    :data:`~repairlib.book.coverage.CLAIMS` (the table may have moved on since it was recorded)."""
    item = claim(record["key"])
    return verdict(item["test"], record["ci95"][0], record["ci95"][1], record["values"], item["unit"])


def scale_text(record: dict) -> str:
    """Where a number comes from: "cpu: fashion_mnist, ResNet20 x1, 2 seed pairs, 10,000 test images"."""
    n = len(record["seeds"])
    return (f"{record['profile']}: {record['dataset']}, {record['model']}, {n} seed pair{'s' if n > 1 else ''} "
            f"({'; '.join(', '.join(map(str, s)) for s in record['seeds'])}), {record['n_test']:,} test images")


# --- tables ----------------------------------------------------------------------------------------

def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def claim_table(items: list, records: list) -> str:
    """A narrow Markdown table of claims and our measurements, notes below it.

    One row per item of ``items`` (rows of :data:`~repairlib.book.coverage.CLAIMS`) and per record of
    it in ``records`` ("not measured yet" where none is): | paper | claim | test | ours | seed pairs |
    95% CI | verdict |; each measured row's note says what we measured, at which scale, and why the
    verdict; one sentence per data set that is not on this machine.
    """
    by_key = {}
    for r in records:
        by_key.setdefault(r["key"], []).append(r)
    rows, notes, away = [], [], {}
    for item in items:
        unit, test = item["unit"], item["test"]
        judged = test["kind"] in ("greater", "less", "within")
        if judged and elsewhere_note(item):
            away.setdefault(item["data"], []).append(item["source"])
        for r in by_key.get(item["key"], [None]):
            head = [_cell(item["source"]), _cell(item["claim"]), _cell(criterion_text(test, unit))]
            if r is None or not judged:
                rows.append(head + (["not measured yet", "–", "–", "not measured yet"] if judged
                                    else ["–", "–", "–", test["kind"]]))
                continue
            says, why = judge(r)
            signed = _signed(test)
            low, high = fmt(r["min"], unit, signed), fmt(r["max"], unit, signed)
            pairs = low if low == high else f"{low} to {high}"
            ci = f"{fmt(r['ci95'][0], unit, signed)} to {fmt(r['ci95'][1], unit, signed)}"
            notes.append(f"{item['source']} ({item['key']}): ours is {item['what']}; {scale_text(r)}. "
                         f"{says.capitalize()}: {why}.")
            rows.append(head + [f"{fmt(r['mean'], unit, signed)} [{len(notes)}]", pairs, ci, says])
    table = markdown_table(["Paper", "Claim", "Test", "Ours", "Seed pairs", "95% CI", "Verdict"], rows)
    text = table + "".join(f"\n{i}. {_cell(n)}" for i, n in enumerate(notes, 1))
    text += "\n" if notes else ""
    for data, sources in away.items():
        text += f"\n*{', '.join(dict.fromkeys(sources))}*: {elsewhere_note({'data': data})}\n"
    return text


def match_box(records: list, section: str | None = None) -> str:
    """The "Does it match the paper?" box of a section page: a MyST admonition holding
    :func:`claim_table` of ``records`` and, when ``section`` is given, of every claim of that section
    (those without a record read "not measured yet")."""
    keys = list(dict.fromkeys(r["key"] for r in records))
    rest = [c for c in (section_claims(section) if section is not None else []) if c["key"] not in keys]
    items = [claim(k) for k in keys] + rest
    counts = {v: sum(judge(r)[0] == v for r in records) for v in VERDICTS[:3]}
    summary = ", ".join(f"{n} {v}" for v, n in counts.items() if n) or "nothing measured yet"
    body = (f"Each claim of the paper this page tests, beside ours ({summary}). *Seed pairs*: our "
            f"value for each pair of independently trained networks; *95% CI*: a paired bootstrap over the "
            f"test images ({records[0]['n_boot'] if records else N_BOOT:,} resamples) of their mean. A claim "
            "is *reproduced* when the interval and every pair pass its test, *differs* when they all fail "
            "it, and is *not distinguishable* otherwise.\n\n")
    return "```{admonition} Does it match the paper?\n:class: tip\n\n" + body + claim_table(items, records) + "```\n"


def seed_pairs(cfg: dict) -> list:
    """The seed pairs of a section's settings: ``cfg["seed_pairs"]`` where the profile has them,
    else the one pair ``cfg["seeds"]``; as a list of ``(seed_a, seed_b)``."""
    pairs = cfg.get("seed_pairs") or [cfg["seeds"]]
    return [tuple(p) for p in pairs]


def interior(alphas) -> list:
    """The indices of the alphas strictly between 0 and 1: a statistic over an interpolation curve
    ("the best interpolation beats the endpoints") must leave out the endpoints themselves."""
    return [i for i, a in enumerate(alphas) if 0 < a < 1]

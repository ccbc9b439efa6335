"""Measurements with their uncertainty, noise-aware verdicts and the "Does it match the paper?" box.

A notebook records each claim of :data:`repairlib.book.coverage.CLAIMS` it measures, then shows the box::

    from repairlib.book import evidence
    ex = [{"a": per_example(a, test), "b": per_example(b, test), "merged": evidence.stack(curve)}]  # one per seed pair
    gap = lambda m: torch.minimum(m["a"]["loss"], m["b"]["loss"]) - m["merged"]["loss"].min(-1).values
    records = [evidence.measure("fig7", gap, ex, profile=profile, dataset=..., model=..., seeds=[(0, 1)])]
    book.save_results("5.4", profile, cfg, rows, start, claims=records)
    Markdown(evidence.match_box(records, section="5.4"))

``per_example`` is :func:`repairlib.evaluation.per_example` (correct and loss per test image, ``[N]``);
a statistic maps the *means* of those arrays (each with a leading resample axis ``[B, ...]``) to
``[B]`` values. The uncertainty is twofold: the spread of the per-seed-pair values (mean, std,
min..max) and a paired bootstrap over test images (the same resampled images for every array and
every pair, ``n_boot = 1000`` resamples, fixed seed) of their mean over pairs. A verdict says
"reproduced" only when the 95% interval *and* every seed pair lie on the claimed side,
"differs" when both lie on the other side, and "not distinguishable" otherwise.

The pages build those arrays with :func:`pair_settings` (the section's settings per seed pair),
:func:`curve` (an interpolation curve image by image, ``[K, N]``), :func:`summary` (the curve's
:func:`repairlib.barrier` dict for the figures, from the same arrays) and :func:`barrier` (Eq. 1 as
a statistic); section 3's statistics of training data with :func:`unit_moments` (per-image moments
of every unit, resampled like test images; the record says ``images="training"``).
"""

from __future__ import annotations

import json
import math

import torch

from repairlib.book.coverage import claim, elsewhere_note, markdown_table, page_of, section_claims

N_BOOT = 1000
LEVEL = 0.95
# plain measurement records of this process (one per curve point, :func:`curve`), written by save_results
RECORDS: list = []
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
    """Where a number comes from: "cpu: fashion_mnist, ResNet20 x1, 2 seed pairs, 10,000 test images"
    (``images`` of the record, e.g. "training" for a statistic of :func:`unit_moments`, else "test")."""
    n = len(record["seeds"])
    return (f"{record['profile']}: {record['dataset']}, {record['model']}, {n} seed pair{'s' if n > 1 else ''} "
            f"({'; '.join(', '.join(map(str, s)) for s in record['seeds'])}), {record['n_test']:,} "
            f"{record.get('images', 'test')} images")


def in_words(record: dict, reproduced: str, differs: str, unsure: str | None = None) -> str:
    """A page's sentence about a measured claim, chosen by its verdict (:func:`judge`) and ending with the
    verdict's reason: ``reproduced`` when it holds, ``differs`` when it fails beyond the noise, else
    ``unsure`` (default: "cannot be told apart from the noise here")."""
    says, why = judge(record)
    text = {"reproduced": reproduced, "differs": differs}.get(says, unsure or "cannot be told apart from the noise here")
    return f"{text} ({says}: {why})"


# --- tables ----------------------------------------------------------------------------------------

def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def spread_text(record: dict, unit: str, signed: bool) -> tuple:
    """``(mean, seed pairs, 95% CI)`` of a measured record as text: "+1.2%", "+0.8% to +1.6%" (one value
    when every pair agrees), "+0.5% to +1.9%"."""
    low, high = fmt(record["min"], unit, signed), fmt(record["max"], unit, signed)
    ci = f"{fmt(record['ci95'][0], unit, signed)} to {fmt(record['ci95'][1], unit, signed)}"
    return fmt(record["mean"], unit, signed), low if low == high else f"{low} to {high}", ci


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
            mean, pairs, ci = spread_text(r, unit, _signed(test))
            notes.append(f"{item['source']} ({item['key']}): ours is {item['what']}; {scale_text(r)}. "
                         f"{says.capitalize()}: {why}.")
            rows.append(head + [f"{mean} [{len(notes)}]", pairs, ci, says])
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
    images = list(dict.fromkeys(r.get("images", "test") for r in records)) or ["test"]
    body = (f"Each claim of the paper this page tests, beside ours ({summary}). *Seed pairs*: our "
            f"value for each pair of independently trained networks; *95% CI*: a paired bootstrap over the "
            f"{' and '.join(images)} images ({records[0]['n_boot'] if records else N_BOOT:,} resamples) of their "
            "mean. A claim "
            "is *reproduced* when the interval and every pair pass its test, *differs* when they all fail "
            "it, and is *not distinguishable* otherwise.\n\n")
    return "```{admonition} Does it match the paper?\n:class: tip\n\n" + body + claim_table(items, records) + "```\n"


HYPOTHESIS_VERDICTS = {"reproduced": "supported", "differs": "not supported"}


def cause_line(record: dict) -> str:
    """One cause test in a sentence: the claim it explains, the hypothesis, our value with its seed-pair
    spread and interval, the scale and whether the measurement supports the hypothesis (a cause record's
    verdict "reproduced" reads *supported*, "differs" *not supported*, otherwise *not distinguishable*)."""
    item = claim(record["key"])
    explained = claim(item["explains"])
    says, why = judge(record)
    mean, pairs, ci = spread_text(record, item["unit"], _signed(item["test"]))
    return (f"**{explained['source']}** ({explained['key']}): {item['claim']}. Ours: {item['what']} = {mean} "
            f"(seed pairs {pairs}; 95% CI {ci}; test {criterion_text(item['test'], item['unit'])}); "
            f"{scale_text(record)}. **{HYPOTHESIS_VERDICTS.get(says, says).capitalize()}**: {why}.")


def cause_box(records: list) -> str:
    """The "Why ours differs" box of a section page: one :func:`cause_line` per cause record."""
    lines = "\n".join(f"- {_cell(cause_line(r))}" for r in records) or "- nothing tested yet"
    return ("```{admonition} Why ours differs: the causes tested\n:class: note\n\n"
            "Where a claim of the paper differs at this scale, the page tests a cause: a hypothesis, a statistic "
            "measured like the claims (per seed pair, with a paired bootstrap) and a test. *Supported*: the "
            "interval and every pair pass it; *not supported*: they all fail it.\n\n" + lines + "\n```\n")


# --- networks, image by image ---------------------------------------------------------------------

def pair_settings(cfg: dict) -> list:
    """A section's settings once per seed pair of :func:`seed_pairs`: ``{**cfg, "seeds": pair}``, which
    is what :func:`repairlib.book.trained_pair` and the pages' own ``zoo.trained`` loops read."""
    return [{**cfg, "seeds": pair} for pair in seed_pairs(cfg)]


def curve(model_a, model_b, data, alphas, correct: str = "none", stats_data=None, scope: str = "conv",
          stats=None, method: str | None = None, figure: str | None = None) -> dict:
    """:func:`repairlib.barrier`'s curve image by image: ``{"correct": [K, N], "loss": [K, N]}`` of
    theta_alpha (``model_b`` aligned to ``model_a``) after ``correct`` at each of the K ``alphas``.
    REPAIR's endpoint statistics are measured once on ``stats_data`` (default ``data``) unless given.

    Each point is also appended to :data:`RECORDS` as a plain record (:func:`point_record`: ``method``
    defaults to "naive" or "aligned" for ``correct="none"``, by whether ``model_b`` was permuted, else
    to ``correct``), which :func:`repairlib.book.save_results` stores as the page's ``measurements``."""
    from repairlib.correction import corrected
    from repairlib.endpoints import endpoint_stats
    from repairlib.evaluation import per_example
    from repairlib.interpolation import interpolate
    from repairlib.plumbing import reusable

    data = reusable(data)
    stats_data = data if stats_data is None else reusable(stats_data)
    if correct in ("repair", "closed_form", "rescale") and stats is None:
        stats = endpoint_stats(model_a, model_b, stats_data, scope)
    out = stack([per_example(corrected(interpolate(model_a, model_b, float(t)), model_a, model_b, stats_data,
                                       float(t), correct, scope, stats), data) for t in alphas])
    if method is None:
        aligned = getattr(model_b, "repairlib_permuted", False)
        method = correct if correct != "none" else ("aligned" if aligned else "naive")
    if correct != "none" and scope != "conv":
        method = f"{method}_{scope}"
    for k, t in enumerate(alphas):
        RECORDS.append(point_record(model_a, model_b, float(t), method, out["correct"][k], out["loss"][k], figure))
    return out


def endpoints(model_a, model_b, data) -> dict:
    """The endpoints' per-example results on ``data``: ``{"a": {"correct": [N], "loss": [N]}, "b": ...}``,
    each also appended to :data:`RECORDS` (methods "endpoint_a" at alpha 0 and "endpoint_b" at alpha 1, with
    the pair's tags: :func:`point_record`), so that barriers can be read from the records."""
    from repairlib.evaluation import per_example

    out = {"a": per_example(model_a, data), "b": per_example(model_b, data)}
    for key, alpha in (("a", 0.0), ("b", 1.0)):
        RECORDS.append(point_record(model_a, model_b, alpha, f"endpoint_{key}", out[key]["correct"], out[key]["loss"]))
    return out


def record(model_a, model_b, alpha, method: str, per_image: dict, figure: str | None = None, **extra) -> dict:
    """Append one plain measurement to :data:`RECORDS` and return it: the per-image results ``per_image``
    (``{"correct": [N], "loss": [N]}``, e.g. of :func:`repairlib.evaluation.per_example`) of a network
    measured for the pair ``model_a``, ``model_b`` (``alpha`` may be None for a network off the path, such
    as a baseline); ``extra`` adds plain fields (numbers, strings)."""
    rec = {**point_record(model_a, model_b, alpha, method, per_image["correct"], per_image["loss"], figure),
           **_plain(extra)}
    RECORDS.append(rec)
    return rec


def point_record(model_a, model_b, alpha: float, method: str, correct: torch.Tensor, loss: torch.Tensor,
                 figure: str | None = None) -> dict:
    """One plain measurement: the network at ``alpha`` between ``model_a`` and ``model_b`` after ``method``,
    its ``accuracy`` and mean ``loss`` over the ``n_test`` images of ``correct`` and ``loss`` (``[N]``),
    with the pair's ``arch``, ``width``, ``depth``, ``norm``, ``dataset``, ``seeds`` and ``train`` (epochs,
    training images, batch size, learning rate, autocast) from their zoo tags (:func:`repairlib.zoo.tagged`; null when untagged)."""
    tags = [getattr(m, "repairlib_training", None) or {} for m in (model_a, model_b)]
    config = tags[0].get("config", {})
    return _plain({
        "figure": figure, "arch": config.get("arch"), "width": config.get("width"), "depth": config.get("depth"),
        "norm": config.get("norm"), "dataset": tags[0].get("dataset"), "seeds": [t.get("seed") for t in tags],
        "split_parts": [t.get("split_part") for t in tags] if tags[0].get("split_part") is not None else None,
        "train": ({"epochs": tags[0].get("epochs"), "train_subset": tags[0].get("train_subset"),
                   "batch_size": tags[0].get("recipe", {}).get("batch_size"), "lr": tags[0].get("recipe", {}).get("lr"),
                   "grad_clip": tags[0].get("recipe", {}).get("grad_clip"),
                   "autocast": tags[0].get("autocast")} if tags[0] else None),
        "n_test": int(correct.numel()), "alpha": None if alpha is None else float(alpha), "method": method,
        "accuracy": float(correct.double().mean()), "loss": float(loss.double().mean())})


def means(results: dict) -> dict:
    """``{"accuracy", "loss"}`` of per-example results (``[N]`` -> float, ``[K, N]`` -> list of K)."""
    def mean(x):
        value = x.double().mean(-1)
        return value.tolist() if value.ndim else float(value)
    return {"accuracy": mean(results["correct"]), "loss": mean(results["loss"])}


def barrier(curve_means: dict, a: dict, b: dict, alphas, what: str = "accuracy") -> torch.Tensor:
    """Eq. 1 as a statistic of means (``[B]``): ``curve_means`` of ``{"correct", "loss"}`` ``[B, K]`` at
    ``alphas``, ``a`` and ``b`` the endpoints' ``[B]``.

        accuracy: max_k ((1 - alpha_k) acc_a + alpha_k acc_b - acc_k);  loss: max_k (L_k - (1 - alpha_k) L_a - alpha_k L_b)
    """
    key = {"accuracy": "correct", "loss": "loss"}[what]
    t = torch.as_tensor(alphas, dtype=torch.float64)
    lerp = (1 - t) * a[key][..., None] + t * b[key][..., None]
    gap = lerp - curve_means[key] if what == "accuracy" else curve_means[key] - lerp
    return gap.max(-1).values


def summary(results: dict, alphas, name: str) -> dict:
    """:func:`repairlib.barrier`'s dict (``alphas``, ``accuracy``, ``loss``, ``endpoints``,
    ``barrier_accuracy``, ``barrier_loss``) of the curve ``results[name]`` ``[K, N]`` between the
    endpoints ``results["a"]``, ``results["b"]`` ``[N]``: what the figures plot, from the per-example
    results the verdicts resample."""
    one = {k: _tree(lambda x: x.double().mean(-1)[None], results[k]) for k in ("a", "b", name)}
    return {"alphas": [float(t) for t in alphas], **means(results[name]),
            "endpoints": {k: means(results[k]) for k in ("a", "b")},
            **{f"barrier_{w}": float(barrier(one[name], one["a"], one["b"], alphas, w)[0])
               for w in ("accuracy", "loss")}}


def average(results: list):
    """The mean over seed pairs of nests of numbers that share one shape (e.g. one :func:`summary` per
    pair): numbers and lists of numbers are averaged entry by entry, anything else is the first's."""
    first = results[0]
    if isinstance(first, dict):
        return {k: average([r[k] for r in results]) for k in first}
    if isinstance(first, (list, tuple)):
        return [average(list(v)) for v in zip(*results, strict=True)]
    if isinstance(first, (int, float)) and not isinstance(first, bool):
        return sum(results) / len(results)
    return first


def values(stat, pairs) -> list:
    """``stat`` on all images, once per seed pair (the ``values`` of :func:`bootstrap`, without it)."""
    return _values(stat, [pairs] if isinstance(pairs, dict) else list(pairs))


def midpoint(alphas) -> int:
    """The index of the alpha nearest 0.5."""
    return min(range(len(alphas)), key=lambda i: abs(float(alphas[i]) - 0.5))


@torch.no_grad()
def unit_moments(models: dict, data, points, cross: tuple | None = None) -> dict:
    """Per-image moments of every unit at ``points`` (correction points, e.g. ``stats.points``) of each
    network of ``models`` (``{name: network}``), in one pass over ``data``: ``{name: {point: {"m1": [C, N],
    "m2": [C, N]}}}``, the mean over the image's positions of x and of x^2 (float64), so that a unit's
    pooled variance is ``mean(m2) - mean(m1)^2`` over the images (:func:`unit_variance`): the per-example
    form of the statistics section 3 measures, for a bootstrap over the (training) images. Each network
    is read where a point's final value is (:func:`repairlib.metrics.value_nodes`: after an unfused
    REPAIR's affine). ``cross=("a", "b")`` adds ``{"cross": {point: mean of x_a * x_b [C, N]}}``."""
    from repairlib.metrics import value_nodes
    from repairlib.plumbing import as_input, batches, eval_mode, fixed_order, reusable
    from repairlib.stats import capture

    points, data = list(points), reusable(data)
    probes = {name: capture(m, [value_nodes(m, points)[p] for p in points], channels=True)
              for name, m in models.items()}
    parts = {name: {p: {"m1": [], "m2": []} for p in points} for name in models}
    products = {p: [] for p in points}
    with eval_mode(*models.values()):
        for x, _ in batches(fixed_order(data), chunk=True):
            outs = {name: probes[name](as_input(x, m)) for name, m in models.items()}
            for name, values in outs.items():
                for p, v in zip(points, values):
                    v = v.double()
                    parts[name][p]["m1"].append(v.mean(-1).T.cpu())
                    parts[name][p]["m2"].append((v * v).mean(-1).T.cpu())
            if cross is not None:
                for p, va, vb in zip(points, outs[cross[0]], outs[cross[1]]):
                    products[p].append((va.double() * vb.double().to(va.device)).mean(-1).T.cpu())
    result = {name: {p: {k: torch.cat(v, 1) for k, v in by.items()} for p, by in got.items()}
              for name, got in parts.items()}
    if cross is not None:
        result["cross"] = {p: torch.cat(v, 1) for p, v in products.items()}
    return result


def unit_variance(m: dict) -> torch.Tensor:
    """Each unit's pooled variance from the means of :func:`unit_moments`: ``m2 - m1^2`` (``[..., C]``)."""
    return (m["m2"] - m["m1"] ** 2).clamp_min(0)


def variance_ratio(mid: dict, a: dict, b: dict) -> torch.Tensor:
    """Section 3.1's ratio of one layer from means of :func:`unit_moments`: v_mid / ((v_a + v_b) / 2),
    v the sum of the layer's unit variances (``[B]``)."""
    v = [unit_variance(m).sum(-1) for m in (mid, a, b)]
    return v[0] / ((v[1] + v[2]) / 2).clamp_min(1e-30)


def unit_correlation(a: dict, b: dict, cross: torch.Tensor) -> torch.Tensor:
    """corr(X_a, X_b) of each pair of units from means of :func:`unit_moments` (``cross``: the means of
    x_a * x_b); dead units give 0 (``[..., C]``)."""
    cov = cross - a["m1"] * b["m1"]
    return cov / (unit_variance(a) * unit_variance(b)).sqrt().clamp_min(1e-12)


def seed_pairs(cfg: dict) -> list:
    """The seed pairs of a section's settings: ``cfg["seed_pairs"]`` where the profile has them,
    else the one pair ``cfg["seeds"]``; as a list of ``(seed_a, seed_b)``."""
    pairs = cfg.get("seed_pairs") or [cfg["seeds"]]
    return [tuple(p) for p in pairs]


def interior(alphas) -> list:
    """The indices of the alphas strictly between 0 and 1: a statistic over an interpolation curve
    ("the best interpolation beats the endpoints") must leave out the endpoints themselves."""
    return [i for i, a in enumerate(alphas) if 0 < a < 1]

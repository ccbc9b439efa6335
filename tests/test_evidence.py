"""Measurements with uncertainty: per-example evaluation, the bootstrap, verdicts, records, the match
box and the coverage index (repairlib.evaluation, repairlib.book.coverage / evidence / results)."""

import json
import re

import pytest
import torch
from torch import nn

from repairlib import baselines, book
from repairlib.book import coverage, evidence
from repairlib.evaluation import evaluate, per_example, per_example_logits

GREATER = {"kind": "greater", "than": 0.0}


def bernoulli(p, n, gen):
    return torch.rand(n, generator=gen) < p


# --- per-example evaluation ------------------------------------------------------------------------

def test_per_example_means_are_evaluate():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    data = [(torch.randn(7, 1, 3, 4), torch.randint(3, (7,))) for _ in range(3)]
    whole, each = evaluate(model, data), per_example(model, data)
    assert each["correct"].shape == each["loss"].shape == (21,) and each["correct"].dtype == torch.bool
    assert each["correct"].double().mean().item() == pytest.approx(whole["accuracy"])
    assert each["loss"].mean().item() == pytest.approx(whole["loss"], rel=1e-12)
    logits, targets = torch.randn(9, 4), torch.randint(4, (9,))
    mine, theirs = per_example_logits(logits, targets), baselines.logit_metrics(logits, targets)
    assert mine["loss"].mean().item() == pytest.approx(theirs["loss"])
    assert mine["correct"].double().mean().item() == pytest.approx(theirs["accuracy"])
    with pytest.raises(ValueError, match="targets"):
        per_example(model, [torch.randn(2, 1, 3, 4)])


# --- the bootstrap ---------------------------------------------------------------------------------

def test_bootstrap_interval_covers_the_truth_at_about_the_nominal_rate():
    gen = torch.Generator().manual_seed(0)
    trials, covered_mean, covered_diff = 200, 0, 0
    for t in range(trials):
        a, b = bernoulli(0.7, 400, gen), bernoulli(0.6, 400, gen)
        r = evidence.bootstrap_mean(a, n_boot=400, seed=t)
        covered_mean += r["low"] <= 0.7 <= r["high"]
        d = evidence.bootstrap_difference(a, b, n_boot=400, seed=t)
        covered_diff += d["low"] <= 0.1 <= d["high"]
    assert 0.88 <= covered_mean / trials <= 0.99, covered_mean / trials
    assert 0.88 <= covered_diff / trials <= 0.99, covered_diff / trials


def test_bootstrap_is_paired_reproducible_and_averages_seed_pairs():
    gen = torch.Generator().manual_seed(1)
    hard = bernoulli(0.5, 2000, gen)  # both networks get the same images right, but for 1%
    better = hard | bernoulli(0.02, 2000, gen)
    paired = evidence.bootstrap_difference(better.double(), hard.double(), seed=3)
    assert paired["low"] > 0 and paired == evidence.bootstrap_difference(better.double(), hard.double(), seed=3)
    unpaired = evidence.bootstrap_mean(better)["high"] - evidence.bootstrap_mean(better)["low"]
    assert paired["high"] - paired["low"] < unpaired / 3  # the shared hard images cancel
    two = evidence.bootstrap(lambda m: m["x"], [{"x": torch.ones(10)}, {"x": torch.zeros(10)}])
    assert two["values"] == [1.0, 0.0] and two["mean"] == 0.5 and two["low"] == two["high"] == 0.5
    with pytest.raises(ValueError, match="same test images"):
        evidence.bootstrap(lambda m: m["x"], [{"x": torch.ones(10)}, {"x": torch.ones(11)}])
    with pytest.raises(ValueError, match="common"):
        evidence.bootstrap(lambda m: m["x"] - m["y"], {"x": torch.ones(10), "y": torch.ones(9)})


def test_stack_curves_slope_trend_and_seed_spread():
    curve = evidence.stack([{"loss": torch.full((5,), float(k))} for k in range(3)])
    assert curve["loss"].shape == (3, 5)
    best = evidence.bootstrap(lambda m: m["c"]["loss"].min(-1).values, {"c": curve}, n_boot=10)
    assert best["values"] == [0.0]
    assert evidence.slope([0, 1, 2], torch.tensor([[1.0, 3.0, 5.0]])).tolist() == [2.0]
    with pytest.raises(ValueError, match="two different x"):
        evidence.slope([1, 1], torch.zeros(2))
    sweep = [{"b": torch.full((8,), 0.3 - 0.1 * k)} for k in range(3)]  # a barrier falling with width
    falls = evidence.bootstrap(evidence.trend(lambda m: m["b"], [0, 1, 2]), [sweep], n_boot=20)
    assert falls["values"][0] == pytest.approx(-0.1)
    assert evidence.seed_spread([1.0, 3.0]) == {"n": 2, "mean": 2.0, "std": pytest.approx(2 ** 0.5),
                                                "min": 1.0, "max": 3.0}
    assert evidence.seed_spread([0.5])["std"] is None


# --- verdicts --------------------------------------------------------------------------------------

def test_a_difference_inside_the_noise_is_not_distinguishable():
    gen = torch.Generator().manual_seed(2)
    a, b = bernoulli(0.802, 500, gen), bernoulli(0.800, 500, gen)
    d = evidence.bootstrap_difference(a.double(), b.double())
    says, why = evidence.verdict(GREATER, d["low"], d["high"], d["values"], "fraction")
    assert says == "not distinguishable" and "holds 0" in why


def test_clear_effects_are_reproduced_or_differ():
    assert evidence.verdict(GREATER, 0.01, 0.03, [0.02, 0.015], "fraction")[0] == "reproduced"
    assert evidence.verdict(GREATER, -0.03, -0.01, [-0.02, -0.01], "fraction")[0] == "differs"
    says, why = evidence.verdict(GREATER, 0.01, 0.03, [0.04, -0.01], "fraction")
    assert says == "not distinguishable" and "seed pairs disagree" in why  # the noise of training
    less = {"kind": "less", "than": 0.05}
    assert evidence.verdict(less, 0.01, 0.04, [0.02], "loss")[0] == "reproduced"
    assert evidence.verdict(less, 0.06, 0.09, [0.07], "loss")[0] == "differs"
    near = {"kind": "within", "of": 0.0, "tol": 0.005}
    assert evidence.verdict(near, -0.002, 0.004, [0.001, 0.0], "fraction")[0] == "reproduced"
    assert evidence.verdict(near, 0.006, 0.02, [0.01, 0.012], "fraction")[0] == "differs"
    assert evidence.verdict(near, 0.001, 0.02, [0.01], "fraction")[0] == "not distinguishable"
    assert evidence.verdict({"kind": "setting"}, 0, 0, [0])[0] == "setting"


# --- records ---------------------------------------------------------------------------------------

def merge_examples(gen, gain):
    """One seed pair of the split-data experiment: endpoints and a 3-point REPAIRed curve."""
    ends = {name: {"loss": torch.rand(1000, generator=gen) + 0.5} for name in ("a", "b")}
    curve = evidence.stack([{"loss": torch.rand(1000, generator=gen) + 0.5 - g} for g in (0.0, gain, 0.0)])
    return {**ends, "merged": curve}


def merge_gap(m):
    return torch.minimum(m["a"]["loss"], m["b"]["loss"]) - m["merged"]["loss"].min(-1).values


def test_records_are_plain_and_round_trip_through_the_results_file(tmp_path):
    gen = torch.Generator().manual_seed(4)
    pairs = [merge_examples(gen, 0.2), merge_examples(gen, 0.25)]
    rec = evidence.measure("fig7", merge_gap, pairs, profile="cpu", dataset="fashion_mnist", model="ResNet20 x1",
                           seeds=[(0, 1), (2, 3)], arch="resnet20", width=1, method="repair")
    assert rec["verdict"] == "reproduced" and rec["figure"] == "Fig. 7" and rec["page"] == "05_4_split_data"
    assert rec["seeds"] == [[0, 1], [2, 3]] and rec["n_test"] == 1000 and len(rec["values"]) == 2
    assert rec["ci95"][0] <= rec["mean"] <= rec["ci95"][1] and rec["paper"]["source"] == "Fig. 7"
    assert rec["min"] <= rec["mean"] <= rec["max"] and rec["arch"] == "resnet20"
    path = book.save_results("5.4", "cpu", {}, {}, directory=tmp_path, claims=[rec], measurements=[])
    assert json.loads(path.read_text())["claims"] == [rec]
    assert book.load_claims(tmp_path) == [rec] and book.load_measurements(tmp_path) == []
    assert book.save_results("5.4", "smoke", {}, {}, claims=[rec]) is None
    with pytest.raises(ValueError, match="unknown claim key"):
        book.save_results("5.4", "cpu", {}, {}, directory=tmp_path, claims=[{**rec, "key": "fig99"}])
    with pytest.raises(ValueError, match="lack the field"):
        book.save_results("5.4", "cpu", {}, {}, directory=tmp_path, measurements=[{"accuracy": 0.5}])
    with pytest.raises(ValueError, match="seed pair"):
        evidence.measure("fig7", merge_gap, pairs, profile="cpu", dataset="fm", model="m", seeds=[(0, 1)])
    with pytest.raises(ValueError, match="plain"):
        evidence.measure("fig7", merge_gap, pairs[:1], profile="cpu", dataset="fm", model="m", seeds=[(0, 1)],
                         net=nn.Linear(1, 1))
    with pytest.raises(KeyError, match="unknown claim"):
        evidence.measure("fig99", merge_gap, pairs, profile="cpu", dataset="fm", model="m", seeds=[(0, 1)] * 2)


def test_every_cause_explains_a_judged_claim_of_its_section_and_is_kept_apart():
    assert set(coverage.CAUSE_KEYS).isdisjoint(coverage.CLAIM_KEYS) and len(set(coverage.CAUSE_KEYS)) == len(coverage.CAUSES)
    for cause in coverage.CAUSES:
        explained = coverage.claim(cause["explains"])
        assert cause["section"] == explained["section"] and explained["test"]["kind"] in ("greater", "less", "within")
        assert cause["test"]["kind"] in ("greater", "less", "within") and cause["source"].startswith("Why ours differs")


def test_a_cause_is_measured_like_a_claim_stored_apart_and_read_as_a_hypothesis(tmp_path):
    gen = torch.Generator().manual_seed(7)
    gain = lambda m: merge_gap(m) + 1.0  # a shifted statistic: the hypothesis holds
    rec = evidence.measure("fig7_unequal_endpoints", gain, [merge_examples(gen, 0.1), merge_examples(gen, 0.2)],
                           profile="cpu", dataset="fashion_mnist", model="ResNet20 x1", seeds=[(0, 1), (2, 3)])
    assert rec["verdict"] == "reproduced" and rec["section"] == "5.4" and rec["figure"] is None
    line = evidence.cause_line(rec)
    assert line.startswith("**Fig. 7** (fig7): Unequal endpoints") and "**Supported**" in line and "2 seed pairs" in line
    box = book.cause_box([rec])
    assert box.startswith("```{admonition} Why ours differs") and line in box and "nothing tested" in book.cause_box([])
    against = evidence.measure("fig7_unequal_endpoints", lambda m: merge_gap(m) - 1.0, [merge_examples(gen, 0.1)],
                               profile="cpu", dataset="fashion_mnist", model="ResNet20 x1", seeds=[(0, 1)])
    assert "**Not supported**" in evidence.cause_line(against)
    book.save_results("5.4", "cpu", {}, {}, directory=tmp_path, causes=[rec], measurements=[])
    assert book.load_causes(tmp_path) == [rec] and book.load_claims(tmp_path) == []  # claim counts stay the paper's
    assert "*Why ours differs, tested on the page:*" in book.coverage_index(tmp_path)
    with pytest.raises(ValueError, match="unknown cause key"):
        book.save_results("5.4", "cpu", {}, {}, directory=tmp_path, causes=[{**rec, "key": "fig7"}])


# --- the box and the index -------------------------------------------------------------------------

def assert_narrow(markdown: str):
    """Tables of at most 7 columns whose cells wrap: no run of 40 characters without a space (link
    targets aside), so that nothing scrolls sideways at 800 px (book/_static/wrap.css)."""
    text = re.sub(r"\]\([^)]*\)", "]", markdown)
    for line in text.splitlines():
        if line.startswith("|"):
            assert line.count(" | ") <= 6, line
        assert not re.search(r"\S{40}", line), line


def test_the_match_box_shows_claims_ours_and_verdicts():
    gen = torch.Generator().manual_seed(5)
    rec = evidence.measure("fig7", merge_gap, [merge_examples(gen, 0.002)], profile="cpu",
                           dataset="fashion_mnist", model="ResNet20 x1", seeds=[(0, 1)])
    box = evidence.match_box([rec], section="5.4")
    assert box.startswith("```{admonition} Does it match the paper?\n") and box.endswith("```\n")
    row = next(line for line in box.splitlines() if line.startswith("| Fig. 7 |"))
    assert row.endswith(f"| {rec['verdict']} |") and rec["verdict"] != "reproduced"  # 0.002: inside the noise
    assert "not measured yet" in box and "Sec. 5.4" in box  # the section's other claims
    assert "CIFAR-100 is not on this machine" in box and "--profile paper" in box
    assert "1. Fig. 7 (fig7): ours is" in box and "1 seed pair (0, 1), 1,000 test images" in box
    assert_narrow(box)
    assert "nothing measured yet" in evidence.match_box([], section="5.4")


def test_the_coverage_index_lists_every_item_and_says_what_is_missing(tmp_path):
    index = book.coverage_index(tmp_path)
    rows = [line for line in index.splitlines() if line.startswith("| ") and not line.startswith("| Paper |")]
    assert len(rows) == len(coverage.CLAIMS)
    judged = [c for c in coverage.CLAIMS if c["test"]["kind"] in ("greater", "less", "within")]
    assert sum(r.endswith("| not measured yet |") for r in rows) == len(judged)
    assert "ImageNet is not on this machine" in index and "[05_4_split_data](executed/cpu/05_4_split_data.ipynb)" in index
    assert_narrow(index)
    gen = torch.Generator().manual_seed(6)
    rec = evidence.measure("fig7", merge_gap, [merge_examples(gen, 0.3)], profile="cpu", dataset="fashion_mnist",
                           model="ResNet20 x1", seeds=[(0, 1)])
    book.save_results("5.4", "cpu", {}, {}, directory=tmp_path, claims=[rec], measurements=[])
    row = next(line for line in book.coverage_index(tmp_path).splitlines() if line.startswith("| Fig. 7 |"))
    assert row.endswith("| reproduced |") and "not measured yet" not in row
    page = tmp_path / "results.md"
    page.write_text(f"{book.RESULTS_BEGIN}\n{book.RESULTS_END}\n{book.results.COVERAGE_BEGIN}\nold\n"
                    f"{book.results.COVERAGE_END}\n")
    assert book.write_results_page(page, tmp_path, intro=tmp_path / "none.md") is True
    assert "old" not in page.read_text() and "| reproduced |" in page.read_text()


def test_the_claims_table_covers_every_figure_panel_of_the_paper():
    keys = [c["key"] for c in coverage.CLAIMS]
    assert len(keys) == len(set(keys)) and set(book.REFERENCE_KEYS) - set(keys) <= {"mlp10_mnist"}
    panels = coverage.figure_panels()
    assert {f for f, _ in panels} == set(range(1, book.results.PAPER_FIGURES + 1))
    for figure in (1, 2, 3, 4, 6, 12):
        assert {p for f, p in panels if f == figure} == set(coverage.PANELS), figure
    for figure in (5, 8, 10, 11, 13):
        assert {p for f, p in panels if f == figure} == {"left", "right"}, figure
    for c in coverage.CLAIMS:
        assert c["section"] in (*book.SECTIONS, None) and c["unit"] in ("fraction", "loss", "ratio", "slope",
                                                                          "layers")
        assert c["test"]["kind"] in ("greater", "less", "within", "context", "setting", "shown")
        assert c["paper"] is None or isinstance(c["paper"], float)
    assert book.claim("fig7")["section"] == "5.4" and book.section_claims("5.4")[0]["key"] == "sec54_split"
    assert book.results.caption_panels("Paper Figs. 7 and 13 left; Fig. 3, middle") == [
        (7, None), (13, "left"), (3, "middle")]
    assert book.results.caption_panels("Our Fig. 3") == []


# --- networks, image by image ----------------------------------------------------------------------

def tiny_pair():
    torch.manual_seed(0)
    from repairlib.models import build
    a, b = (build({"arch": "mlp", "depth": 3, "width": 8, "in_features": 12, "num_classes": 3}) for _ in range(2))
    data = [(torch.randn(16, 1, 3, 4), torch.randint(3, (16,))) for _ in range(3)]
    return a, b, data


def test_curve_and_summary_are_barrier_image_by_image():
    import repairlib

    a, b, data = tiny_pair()
    alphas = [0.0, 0.5, 1.0]
    for correct in ("none", "repair"):
        whole = repairlib.barrier(a, b, data, alphas, correct=correct)
        results = {"a": per_example(a, data), "b": per_example(b, data),
                   "c": evidence.curve(a, b, data, alphas, correct=correct)}
        assert results["c"]["correct"].shape == (3, 48)
        mine = evidence.summary(results, alphas, "c")
        for key in ("accuracy", "loss"):
            assert mine[key] == pytest.approx(whole[key], rel=1e-9)
            assert mine[f"barrier_{key}"] == pytest.approx(whole[f"barrier_{key}"], rel=1e-9, abs=1e-12)
            assert mine["endpoints"]["a"][key] == pytest.approx(whole["endpoints"]["a"][key])
    assert evidence.midpoint([0.0, 0.25, 0.5, 1.0]) == 2 and evidence.midpoint([0.5]) == 0
    cfg = {"seeds": (0, 1), "seed_pairs": ((0, 1), (2, 3))}
    assert [c["seeds"] for c in evidence.pair_settings(cfg)] == [(0, 1), (2, 3)]


def test_unit_moments_give_the_pooled_statistics_of_section_3():
    import repairlib
    from repairlib import analysis

    a, b, data = tiny_pair()
    stats = repairlib.endpoint_stats(a, b, data)
    mid = repairlib.interpolate(a, b, 0.5)
    got = evidence.unit_moments({"a": a, "b": b, "mid": mid}, data, stats.points, cross=("a", "b"))
    p = stats.points[0]
    assert got["a"][p]["m1"].shape == (8, 48) and got["cross"][p].shape == (8, 48)
    whole = _tree_mean(got)
    assert evidence.unit_variance(whole["a"][p])[0] == pytest.approx(stats.var_a[p], rel=1e-6, abs=1e-9)
    corr = evidence.unit_correlation(whole["a"][p], whole["b"][p], whole["cross"][p])[0]
    assert corr == pytest.approx(analysis.unit_correlations(stats)[p], rel=1e-5, abs=1e-7)
    ratios = repairlib.variance_ratio(mid, a, b, data, stats=stats)
    for q in stats.points:
        assert float(evidence.variance_ratio(whole["mid"][q], whole["a"][q], whole["b"][q])[0]) == pytest.approx(
            ratios[q], rel=1e-6)
    rec = evidence.measure("fig2_left", lambda m: evidence.variance_ratio(m["mid"][p], m["a"][p], m["b"][p]),
                           [got], profile="cpu", dataset="x", model="MLP", seeds=[(0, 1)], images="training")
    assert rec["n_test"] == 48 and "48 training images" in evidence.scale_text(rec)


def _tree_mean(tree):
    """Means over the images of a nest of [..., N] arrays, with a resample axis of 1: what a statistic sees."""
    return evidence._tree(lambda x: x.double().mean(-1)[None], tree)


def test_average_values_and_in_words():
    assert evidence.average([{"a": [1.0, 2.0], "n": "x", "c": {"d": 3}}, {"a": [3.0, 4.0], "n": "y", "c": {"d": 5}}]) == {
        "a": [2.0, 3.0], "n": "x", "c": {"d": 4.0}}
    pairs = [{"x": torch.tensor([1.0, 0.0])}, {"x": torch.tensor([1.0, 1.0])}]
    assert evidence.values(lambda m: m["x"], pairs) == [0.5, 1.0]
    gen = torch.Generator().manual_seed(7)
    big = evidence.measure("fig7", merge_gap, [merge_examples(gen, 0.3)], profile="cpu", dataset="fashion_mnist",
                           model="ResNet20 x1", seeds=[(0, 1)])
    small = evidence.measure("fig7", merge_gap, [merge_examples(gen, 0.002)], profile="cpu", dataset="fashion_mnist",
                             model="ResNet20 x1", seeds=[(0, 1)])
    assert evidence.in_words(big, "it merges", "it does not").startswith("it merges (reproduced: 95% interval")
    assert evidence.in_words(small, "it merges", "it does not", "maybe").startswith("maybe (not distinguishable")


def test_curves_leave_plain_records_that_name_the_networks_and_the_method(tmp_path):
    from repairlib import zoo
    from repairlib.alignment import align, permute

    torch.manual_seed(0)
    nets = [zoo.tagged(nn.Sequential(nn.Flatten(), nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)),
                       zoo.training_description({"arch": "mlp", "depth": 2, "width": 6}, "fashion_mnist",
                                                epochs=1, seed=s, batch_size=10, lr=0.1, bf16=True)) for s in (3, 4)]
    x, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
    data = [(x[:10], y[:10]), (x[10:], y[10:])]
    aligned = permute(nets[1], align(nets[0], nets[1], data, method="weight"))
    evidence.RECORDS.clear()
    naive = evidence.curve(nets[0], nets[1], data, (0.0, 0.5), figure="Fig. 1 right")
    evidence.curve(nets[0], aligned, data, (0.5,), correct="repair")
    evidence.curve(nets[0], aligned, data, (0.5,))
    recs = list(evidence.RECORDS)
    assert [r["method"] for r in recs] == ["naive", "naive", "repair", "aligned"]
    assert recs[0]["figure"] == "Fig. 1 right" and recs[2]["figure"] is None
    assert recs[1]["seeds"] == [3, 4] and recs[1]["arch"] == "mlp" and recs[1]["width"] == 6
    assert recs[1]["n_test"] == 20 and recs[1]["alpha"] == 0.5
    assert recs[1]["train"] == {"epochs": 1, "train_subset": None, "batch_size": 10, "lr": 0.1, "grad_clip": None,
                               "autocast": "bf16"}
    assert recs[1]["accuracy"] == pytest.approx(float(naive["correct"][1].double().mean()))
    assert recs[1]["loss"] == pytest.approx(float(naive["loss"][1].double().mean()))
    path = book.save_results("5.4", "cpu", {}, {}, directory=tmp_path)
    assert json.loads(path.read_text())["measurements"] == recs
    assert {r["section"] for r in book.load_measurements(tmp_path)} == {"5.4"}
    evidence.RECORDS.clear()


def test_endpoints_are_recorded_and_give_midpoint_only_curves_a_barrier():
    torch.manual_seed(1)
    nets = [nn.Sequential(nn.Flatten(), nn.Linear(4, 3)) for _ in range(2)]
    x, y = torch.randn(12, 4), torch.randint(0, 3, (12,))
    evidence.RECORDS.clear()
    ends = evidence.endpoints(nets[0], nets[1], [(x, y)])
    evidence.curve(nets[0], nets[1], [(x, y)], (0.5,), method="aligned")
    evidence.curve(nets[0], nets[1], [(x, y)], (0.5,), correct="repair")
    recs = list(evidence.RECORDS)
    assert [(r["method"], r["alpha"]) for r in recs[:2]] == [("endpoint_a", 0.0), ("endpoint_b", 1.0)]
    assert recs[1]["accuracy"] == pytest.approx(float(ends["b"]["correct"].double().mean()))
    found = book.results.curve_barriers(recs, ("aligned", "repair"))
    (pair,) = found[None, None, None, None]
    line = 0.5 * (recs[0]["accuracy"] + recs[1]["accuracy"])
    assert pair["aligned"] == pytest.approx(100 * (line - recs[2]["accuracy"]))
    evidence.RECORDS.clear()


def test_a_baseline_is_recorded_with_its_extra_fields_and_split_pairs_stay_out_of_fig1():
    """`evidence.record` keeps any per-image result (a baseline off the path has alpha None) with plain
    extra fields; pairs trained on different halves (5.4) are not one task, so Fig. 1 right skips them."""
    from repairlib import zoo

    nets = [zoo.tagged(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)),
                       zoo.training_description({"arch": "mlp", "depth": 1, "width": 3}, "fashion_mnist", epochs=1,
                                                seed=s, split_part=s, grad_clip=1.0)) for s in (0, 1)]
    per_image = {"correct": torch.tensor([True, False, True, True]), "loss": torch.tensor([0.1, 2.0, 0.3, 0.2])}
    evidence.RECORDS.clear()
    rec = evidence.record(nets[0], nets[1], None, "full_data", per_image, figure="Fig. 13", variance_ratio=0.25)
    assert evidence.RECORDS == [rec] and rec["alpha"] is None and rec["variance_ratio"] == 0.25
    assert rec["accuracy"] == 0.75 and rec["loss"] == pytest.approx(0.65) and rec["n_test"] == 4
    assert rec["split_parts"] == [0, 1] and rec["train"]["grad_clip"] == 1.0
    with pytest.raises(ValueError, match="plain numbers and strings"):
        evidence.record(nets[0], nets[1], 0.5, "x", per_image, extra=object())
    for alpha, method in ((0.0, "endpoint_a"), (1.0, "endpoint_b"), (0.5, "aligned"), (0.5, "repair")):
        evidence.record(nets[0], nets[1], alpha, method, per_image)
    assert book.results.curve_barriers(evidence.RECORDS) == {}
    evidence.RECORDS.clear()

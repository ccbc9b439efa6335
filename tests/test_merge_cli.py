"""``python -m repairlib merge``: one JSON line, a loadable merged checkpoint, one-line errors."""

import json
import os

import pytest
import torch

import repairlib
from repairlib import cli, data, models, zoo
from repairlib.cli import check_savable
from repairlib.correction import repair
from repairlib.evaluation import evaluate
from repairlib.pipeline import merge

os.environ.setdefault("TQDM_DISABLE", "1")
CONFIG = {"arch": "mlp", "depth": 2, "width": 24, "in_features": 784, "num_classes": 10}



@pytest.fixture(scope="module")
def fashion():
    try:
        return data.loader("fashion_mnist", "test", device="cpu")
    except data.DatasetNotFoundError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, fashion):
    folder = tmp_path_factory.mktemp("ckpt")
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        paths.append(str(zoo.save(models.build(CONFIG), folder / f"m{seed}.pt", CONFIG)))
    return paths


def run(capsys, *argv):
    rc = cli.main(["merge", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("align, correct", [("activation", "repair"), ("weight", "closed_form"),
                                            ("none", "reset_bn"), ("activation", "none")])
def test_merge_prints_one_json_line_and_writes_a_loadable_checkpoint(capsys, tmp_path, checkpoints, fashion,
                                                                      align, correct):
    out_path = tmp_path / "merged.pt"
    rc, out, err = run(capsys, *checkpoints, "--dataset", "fashion-mnist", "--stats-examples", "300",
                       "--align", align, "--correct", correct, "--device", "cpu", "--out", str(out_path),
                       "--json")
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    for name in ("a", "b", "merged"):
        assert 0 <= result[f"{name}_accuracy"] <= 1 and result[f"{name}_loss"] > 0
    assert all(result[f"seconds_{k}"] >= 0 for k in ("merge", "evaluate"))
    assert result["a_accuracy"] == evaluate(zoo.load(checkpoints[0]), fashion)["accuracy"]
    merged = zoo.load(out_path)
    assert evaluate(merged, fashion)["loss"] == pytest.approx(result["merged_loss"], rel=1e-6)


def test_merge_of_three_checkpoints_with_weights_is_merge_many(capsys, tmp_path, checkpoints, fashion):
    torch.manual_seed(2)
    third = str(zoo.save(models.build(CONFIG), tmp_path / "m2.pt", CONFIG))
    rc, out, err = run(capsys, *checkpoints, third, "--dataset", "fashion_mnist", "--stats-examples", "300",
                       "--weights", "2", "1", "1", "--device", "cpu", "--out", str(tmp_path / "merged.pt"), "--json")
    assert rc == 0, err
    result = json.loads(out)
    assert result["weights"] == [0.5, 0.25, 0.25] and "alpha" not in result
    assert {f"{n}_accuracy" for n in "abc"} <= result.keys()
    train = data.loader("fashion_mnist", "train", subset=300, device="cpu")
    expected = repairlib.merge_many([zoo.load(p) for p in (*checkpoints, third)], train, weights=[2, 1, 1])
    assert evaluate(zoo.load(tmp_path / "merged.pt"), fashion)["loss"] == pytest.approx(
        evaluate(expected, fashion)["loss"], rel=1e-6)
    for argv, expected_error in (((checkpoints[0],), "two or more checkpoints"),
                                 ((*checkpoints, third, "--alpha", "0.3"), "--alpha is for two checkpoints"),
                                 ((*checkpoints, "--weights", "1"), "one weight per checkpoint")):
        rc, out, err = run(capsys, *argv, "--dataset", "fashion_mnist")
        assert rc == 2 and expected_error in err and len(err.strip().splitlines()) == 1


def test_merge_without_json_prints_key_value_lines(capsys, checkpoints):
    rc, out, _ = run(capsys, *checkpoints, "--dataset", "fashion_mnist", "--stats-examples", "200",
                     "--align", "none", "--correct", "none", "--alpha", "0")
    assert rc == 0
    values = dict(line.split(": ", 1) for line in out.strip().splitlines())
    assert float(values["merged_accuracy".rjust(24)]) == float(values["a_accuracy".rjust(24)])


def test_bad_checkpoints_and_arguments_are_one_line_errors(capsys, tmp_path, checkpoints):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    torch.manual_seed(0)
    wide = {**CONFIG, "width": 32}
    other = zoo.save(models.build(wide), tmp_path / "wide.pt", wide)
    rgb = {**CONFIG, "in_features": 3 * 32 * 32}
    wrong_input = zoo.save(models.build(rgb), tmp_path / "rgb.pt", rgb)
    cases = [
        ((str(corrupt), checkpoints[1]), "corrupt.pt"),
        ((checkpoints[0], str(other)), "differ"),
        ((checkpoints[0], str(tmp_path / "missing.pt")), "missing.pt"),
        ((checkpoints[0], checkpoints[1], "--alpha", "1.5"), "alpha"),
        ((checkpoints[0], checkpoints[1], "--stats-examples", "0"), "stats-examples"),
        ((str(wrong_input), str(wrong_input)), "cannot run on"),
    ]
    for argv, expected in cases:
        rc, out, err = run(capsys, *argv, "--dataset", "fashion_mnist", "--align", "none")
        assert rc == 2, (argv, out, err)
        assert err.startswith("error: ") and expected in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1 and out == ""


def test_unsavable_merges_are_refused_clearly():
    """Residual-stream corrections (scope 'all') live in inserted nodes that a config cannot rebuild."""
    torch.manual_seed(0)
    a, b = (models.resnet20(width=1, in_channels=1, num_classes=3).eval() for _ in "ab")
    batches = [(torch.randn(16, 1, 8, 8), torch.zeros(16, dtype=torch.long))]
    merged = merge(a, b, batches, align="none", correct="repair", scope="conv")
    assert type(merged) is type(a)
    check_savable(merged, a)  # BatchNorm ResNet, conv scope: folds into the BatchNorms
    with pytest.raises(ValueError, match="--scope all"):
        check_savable(repair(merged, a, b, batches, 0.5, scope="all"), a)

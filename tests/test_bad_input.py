"""Bad input, as a hostile but realistic user gives it (issue #14): one clear line, nothing lost.

Every CLI case exits with status 2 and prints exactly one line on stderr, starting with ``error: ``,
no traceback, naming the file, tensor or option; the API cases raise a ``ValueError`` (or a specific
subclass) or warn, by name. Nothing is overwritten, no temporary file is left behind.
"""

import gzip
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import nbformat
import pytest
import torch
from test_data import write_idx, write_mnist

import repairlib
from repairlib import cli, data, models, zoo

ROOT = Path(__file__).resolve().parents[1]
CONFIG = {"arch": "mlp", "depth": 2, "width": 24, "in_features": 784, "num_classes": 10}
FM = "fashion_mnist"
MLP_50x2048 = {"arch": "mlp", "depth": 50, "width": 2048}


class Evil:
    """A pickle that would create ``marker`` when unpickled without ``weights_only``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _save_config(path, config, state=None):
    """A checkpoint file with any config (bypassing ``models.build``'s bounds) and a small state."""
    torch.manual_seed(0)
    ckpt = {"format": zoo.FORMAT, "config": config, "meta": {},
            "state_dict": state if state is not None else models.build(CONFIG).state_dict()}
    torch.save(ckpt, path)
    return path


def _nonfinite_checkpoint(path, value):
    torch.manual_seed(0)
    model = models.build(CONFIG)
    with torch.no_grad():
        model[3].weight[1, 2] = value
    return zoo.save(model, path, CONFIG)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Every bad file of the table, in one folder: name -> path (str)."""
    d = tmp_path_factory.mktemp("bad")
    paths = {}
    for seed in (0, 1):
        torch.manual_seed(seed)
        paths[f"m{seed}"] = zoo.save(models.build(CONFIG), d / f"m{seed}.pt", CONFIG)
    wide, rgb = {**CONFIG, "width": 32}, {**CONFIG, "in_features": 3 * 32 * 32}
    paths["wide"] = zoo.save(models.build(wide), d / "wide.pt", wide)
    paths["rgb"] = zoo.save(models.build(rgb), d / "rgb.pt", rgb)
    paths["nan"] = _nonfinite_checkpoint(d / "nan.pt", float("nan"))
    paths["inf"] = _nonfinite_checkpoint(d / "inf.pt", float("inf"))
    paths["random"] = d / "random.pt"
    paths["random"].write_bytes(os.urandom(2000))
    paths["marker"] = d / "pwned"
    paths["evil"] = d / "evil.pt"
    torch.save({"format": zoo.FORMAT, "config": Evil(paths["marker"])}, paths["evil"])
    paths["huge"] = _save_config(d / "huge.pt", {**CONFIG, "width": 10**6, "depth": 50})
    paths["deep"] = _save_config(d / "deep.pt", {**CONFIG, "depth": 10**6})
    paths["link"] = d / "link.pt"
    paths["link"].symlink_to(paths["m0"])
    paths["empty"] = d / "empty"
    paths["empty"].mkdir()
    paths["afile"] = d / "afile.txt"
    paths["afile"].write_text("not a directory")
    paths["truncated"] = d / "truncated_root"
    write_mnist(paths["truncated"], "MNIST")
    gz = paths["truncated"] / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[: len(gz.read_bytes()) // 2])
    paths["notebooks"] = d / "notebooks"
    paths["notebooks"].mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_code_cell("profile = 'cpu'", metadata={"tags": ["parameters"]}))
    nbformat.write(nb, str(paths["notebooks"] / "n.ipynb"))
    paths["dir"] = d
    return {k: str(v) for k, v in paths.items()}


@pytest.fixture(autouse=True)
def no_fallbacks(monkeypatch):
    monkeypatch.setenv("REPAIR_DOWNLOAD", "0")
    monkeypatch.delenv("REPAIR_DATA", raising=False)


def _listing(folder) -> list:
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*"))


MERGE = ["merge", "{m0}", "{m1}", "--dataset", FM, "--stats-examples", "100", "--device", "cpu"]
TRAIN = ["train", "--arch", "mlp", "--depth", "1", "--width", "8", "--dataset", FM, "--epochs", "1",
         "--train-subset", "64", "--device", "cpu"]
BOOK = ["book", "--notebooks", "{notebooks}", "--no-build", "--jobs", "1"]

# id: (argv, phrases the one error line must hold); "{name}" is replaced by that file's path
CLI_CASES = {
    # issue #14's rows
    "merge --out is input A": (MERGE + ["--out", "{m0}"], ["--out", "m0.pt is the input", "replace"]),
    "merge --out is input B": (MERGE + ["--out", "{dir}/./m1.pt"], ["m1.pt is the input"]),
    "merge --out links to input A": (MERGE + ["--out", "{link}"], ["link.pt is the input", "m0.pt"]),
    "merge --data-root empty": (MERGE + ["--data-root", "{empty}"], ["not found in the data root", "{empty}"]),
    "merge --data-root truncated gz": (["merge", "{m0}", "{m1}", "--dataset", "mnist", "--data-root", "{truncated}"],
                                       ["train-images-idx3-ubyte.gz is truncated", "copy or download it again"]),
    "merge NaN weights, --json": (MERGE + ["--align", "none", "--correct", "none", "--json"],
                                  ["nan.pt has NaN or Inf weights", "'3.weight'", "--allow-nonfinite"]),
    "merge Inf weights, aligned": (MERGE, ["inf.pt has NaN or Inf weights", "'3.weight'"]),
    "merge --allow-nonfinite with alignment": (MERGE + ["--allow-nonfinite"],
                                               ["--allow-nonfinite works only with --align none --correct none"]),
    "merge --out in a file": (MERGE + ["--out", "{afile}/merged.pt"], ["--out", "afile.txt is a file"]),
    "merge --out unwritable": (MERGE + ["--out", "/proc/repairlib-merged.pt"], ["--out", "cannot write in /proc"]),
    "merge random-bytes checkpoint": (MERGE, ["random.pt is not a valid repairlib checkpoint"]),
    "merge malicious pickle": (MERGE, ["evil.pt is not a valid repairlib checkpoint", "never unpickles"]),
    "merge config of 5e13 parameters": (MERGE, ["huge.pt", "MAX_PARAMETERS"]),
    "merge config of depth 1e6": (MERGE, ["deep.pt", "MAX_MLP_DEPTH"]),
    "merge wrong-shape images": (["merge", "{rgb}", "{rgb}", "--dataset", FM, "--device", "cpu", "--align", "none"],
                                 ["rgb.pt cannot run on fashion_mnist images of shape (1, 28, 28)", "--dataset"]),
    "train --out in a file": (TRAIN + ["--out", "{afile}/m.pt"], ["--out", "afile.txt is a file"]),
    "train --out unwritable": (TRAIN + ["--out", "/proc/repairlib-m.pt"], ["--out", "cannot write in /proc"]),
    "train --data-root empty": (TRAIN + ["--data-root", "{empty}", "--out", "{dir}/t.pt"],
                                ["'fashion_mnist' (train) not found in the data root", "{empty}"]),
    "train --data-root truncated gz": (["train", "--arch", "mlp", "--dataset", "mnist", "--epochs", "1",
                                        "--data-root", "{truncated}", "--out", "{dir}/t.pt"],
                                       ["train-images-idx3-ubyte.gz is truncated"]),
    "train config of 5e13 parameters": (["train", "--arch", "mlp", "--width", "1000000", "--depth", "50",
                                         "--dataset", FM, "--epochs", "1", "--out", "{dir}/t.pt"],
                                        ["MAX_PARAMETERS", "choose a smaller width or depth"]),
    "book --out is --notebooks": (BOOK + ["--out", "{notebooks}"], ["--out", "would replace the source notebooks"]),
    "book --out in a file": (BOOK + ["--out", "{afile}/executed"], ["--out", "afile.txt is a file"]),
    # cases that already held
    "merge architectures differ": (["merge", "{m0}", "{wide}", "--dataset", FM], ["m0.pt and", "wide.pt", "differ"]),
    "merge missing checkpoint": (["merge", "{m0}", "{dir}/missing.pt", "--dataset", FM], ["missing.pt"]),
    "merge --alpha 1.5": (MERGE + ["--alpha", "1.5"], ["alpha must lie in [0, 1]"]),
    "merge --alpha nan": (MERGE + ["--alpha", "nan"], ["alpha must be finite"]),
    "merge --stats-examples 0": (MERGE + ["--stats-examples", "0"], ["--stats-examples must be positive"]),
    "merge unknown data set": (["merge", "{m0}", "{m1}", "--dataset", "imagenet22k"], ["unknown data set 'imagenet22k'"]),
    "merge unknown device": (MERGE + ["--device", "tpu9"], ["unknown device 'tpu9'"]),
    "merge --out is a directory": (MERGE + ["--out", "{dir}"], ["is a directory"]),
    "train unknown arch": (["train", "--arch", "transformer", "--dataset", FM, "--epochs", "1", "--out", "{dir}/t.pt"],
                           ["unknown arch 'transformer'"]),
    "train unknown data set": (["train", "--arch", "mlp", "--dataset", "imagenet22k", "--epochs", "1",
                                "--out", "{dir}/t.pt"], ["unknown data set 'imagenet22k'"]),
    "train negative epochs": (["train", "--arch", "mlp", "--dataset", FM, "--epochs", "-3", "--out", "{dir}/t.pt"],
                              ["--epochs must be a positive integer, got -3"]),
    "train width 0": (["train", "--arch", "resnet20", "--width", "0", "--dataset", FM, "--epochs", "1",
                       "--out", "{dir}/t.pt"], ["width must be a positive number (a channel multiplier), got 0"]),
    "train unknown norm": (["train", "--arch", "resnet20", "--norm", "gn", "--dataset", FM, "--epochs", "1",
                            "--out", "{dir}/t.pt"], ["unknown norm 'gn'"]),
    "train --out is a directory": (TRAIN + ["--out", "{dir}"], ["is a directory"]),
    "book unknown section": (BOOK + ["--only", "5.9", "--out", "{dir}/executed"], ["unknown section '5.9'"]),
    "book undeclared parameter": (BOOK + ["-p", "widht", "2", "--out", "{dir}/executed"],
                                  ["'widht' are not declared"]),
    "book missing notebook dir": (["book", "--notebooks", "{dir}/nowhere", "--no-build"], ["nowhere does not exist"]),
}
CHECKPOINT_FOR = {"NaN": "nan", "Inf": "inf", "random-bytes": "random", "malicious": "evil", "5e13": "huge",
                  "depth 1e6": "deep", "--allow-nonfinite": "nan"}


def _argv(case: str, files: dict) -> list:
    argv, _ = CLI_CASES[case]
    argv = [a.format(**files) for a in argv]
    bad = next((name for word, name in CHECKPOINT_FOR.items() if word in case and case.startswith("merge")), None)
    if bad and argv[1] == files["m0"]:
        argv[1] = files[bad]
    return argv


@pytest.mark.parametrize("case", CLI_CASES)
def test_cli_bad_input_is_one_error_line_and_nothing_is_lost(case, files, capsys, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("the work started before the bad input was found")

    if "--out" in case:  # found before any training or merging
        monkeypatch.setattr(zoo, "train_model", no_work)
        monkeypatch.setattr("repairlib.pipeline.merge", no_work)
    before = {name: Path(p).read_bytes() for name, p in files.items() if name in ("m0", "m1", "nan")}
    listing = _listing(files["dir"])
    assert cli.main(_argv(case, files)) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: ") and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    for phrase in CLI_CASES[case][1]:
        assert phrase.format(**files) in err, (phrase, err)
    assert "weights_only=False" not in err and "will likely succeed" not in err  # no unsafe advice
    assert {name: Path(files[name]).read_bytes() for name in before} == before  # no input replaced
    assert _listing(files["dir"]) == listing  # no output, no temp file, no gunzipped half
    assert not Path(files["marker"]).exists()  # the malicious pickle ran nothing


def _run(*argv, timeout=120):
    env = {**os.environ, "REPAIR_DOWNLOAD": "0", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("REPAIR_DATA", None)
    return subprocess.run([sys.executable, "-m", "repairlib", *argv], check=False, capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=timeout)


def test_wrong_shape_images_print_one_line_from_a_real_process(files):
    """torch.fx and torch print nothing of their own: the process's whole stderr is the one line."""
    proc = _run("merge", files["rgb"], files["rgb"], "--dataset", FM, "--device", "cpu", "--align", "weight")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error: the network in ") and "rgb.pt cannot run on" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_allow_nonfinite_interpolates_and_json_stays_valid(files):
    proc = _run("merge", files["nan"], files["m1"], "--dataset", FM, "--device", "cpu", "--stats-examples", "100",
                "--align", "none", "--correct", "none", "--allow-nonfinite", "--json")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"warning: {files['nan']} has NaN or Inf weights: 1 value(s) in tensor '3.weight'"]
    result = json.loads(proc.stdout, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    assert result["a_loss"] is None and result["merged_loss"] is None and 0 <= result["b_accuracy"] <= 1


def test_emit_writes_nan_and_inf_as_null(capsys):
    cli.emit({"loss": float("nan"), "curve": [1.0, float("inf"), {"x": float("-inf")}], "ok": 0.5}, as_json=True)
    assert json.loads(capsys.readouterr().out) == {"loss": None, "curve": [1.0, None, {"x": None}], "ok": 0.5}


# ---------------------------------------------------------------- the API


def test_nonfinite_checkpoints_warn_by_file_and_tensor_and_merge_refuses_them(files):
    for name in ("nan", "inf"):
        with pytest.warns(zoo.NonFiniteWarning, match=rf"{name}\.pt has NaN or Inf weights: 1 value\(s\) in tensor '3.weight'"):
            model = zoo.load(files[name])
        with pytest.raises(zoo.NonFiniteError, match=rf"{name}\.pt has NaN or Inf weights"):
            zoo.load(files[name], nonfinite="error")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            zoo.load(files[name], nonfinite="ignore")
            zoo.load(files["m0"])  # a finite checkpoint loads without a word
        batches = [(torch.randn(8, 1, 28, 28), torch.zeros(8, dtype=torch.long))]
        with pytest.raises(ValueError, match=r"(model_a|models\[0\]) has NaN or Inf values in '3.weight'"):
            repairlib.merge(model, zoo.load(files["m1"]), batches, align="none", correct="none")
    with pytest.raises(ValueError, match="nonfinite must be one of"):
        zoo.load(files["m0"], nonfinite="maybe")


def test_unreadable_checkpoints_are_refused_without_unsafe_advice(files):
    for name, detail in (("random", "cannot be read"), ("evil", "GLOBAL")):  # random bytes: any unpickling error
        with pytest.raises(ValueError, match=f"{name}.pt is not a valid repairlib checkpoint") as err:
            zoo.load(files[name])
        assert detail in str(err.value) and "weights_only=False" not in str(err.value)
    assert not Path(files["marker"]).exists()


def test_oversized_configs_are_refused_before_any_allocation(files):
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"would have 4\.9e\+13 parameters, above the limit of 2e\+09"):
        models.build({**CONFIG, "width": 10**6, "depth": 50})
    with pytest.raises(ValueError, match=r"depth=1000000 is above the limit of 1000"):
        models.build({**CONFIG, "depth": 10**6})
    with pytest.raises(ValueError, match="resnet20 with width=300 would have"):
        models.check_size({"arch": "resnet20", "width": 300})
    with pytest.raises(ValueError, match="huge.pt is not a valid repairlib checkpoint: its config is refused"):
        zoo.load(files["huge"])
    with pytest.raises(ValueError, match="MAX_PARAMETERS"):
        zoo.training_description({"arch": "vgg", "width": 64}, FM, epochs=1)
    assert time.perf_counter() - start < 5
    assert models.parameter_count(CONFIG) == sum(p.numel() for p in models.build(CONFIG).parameters())
    for largest in ({"arch": "resnet20", "width": 16}, {"arch": "vgg", "depth": 19, "width": 4}, MLP_50x2048):
        assert models.parameter_count(largest) <= models.MAX_PARAMETERS  # the paper's networks fit


def test_mixed_dtypes_are_refused_by_name():
    torch.manual_seed(0)
    a, b = models.build(CONFIG).double().eval(), models.build(CONFIG).eval()
    batches = [(torch.randn(8, 1, 28, 28), torch.zeros(8, dtype=torch.long))]
    with pytest.raises(ValueError, match=r"dtype at '1.weight': torch.float64 vs torch.float32.*\.float\(\)"):
        repairlib.merge(a, b, batches)


def test_a_generator_as_data_is_read_once_and_gives_the_list_result():
    torch.manual_seed(0)
    a, b = models.build(CONFIG).eval(), models.build(CONFIG).eval()
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(32, 1, 28, 28, generator=g), torch.zeros(32, dtype=torch.long)) for _ in range(3)]
    from_list = repairlib.align(a, b, batches)
    from_generator = repairlib.align(a, b, (batch for batch in batches))
    assert from_list.keys() == from_generator.keys()
    assert all(torch.equal(from_list[k], from_generator[k]) for k in from_list)
    merged = [repairlib.merge(a, b, d) for d in (batches, iter(batches))]
    assert all(torch.equal(merged[0].state_dict()[k], merged[1].state_dict()[k]) for k in merged[0].state_dict())


def test_truncated_gz_is_a_clear_error_and_leaves_no_temp_file(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    write_mnist(tmp_path, "MNIST")
    raw = tmp_path / "MNIST" / "raw"
    gz = raw / "t10k-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:-40])
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    listing = _listing(raw)
    for attempt in range(2):  # every attempt: the same error, nothing left behind
        with pytest.raises(data.DatasetCorruptError, match=f"{gz} is truncated or not a gzip file"):
            data.load_tensors("mnist", "test", root=tmp_path)
        assert _listing(raw) == sorted([*listing, "train-images-idx3-ubyte", "train-labels-idx1-ubyte"])
    write_idx(gz, torch.zeros(6, 28, 28, dtype=torch.uint8).numpy())
    with pytest.raises(data.DatasetCorruptError, match="t10k-labels-idx1-ubyte.gz is truncated or not a gzip"):
        data.load_tensors("mnist", "test", root=tmp_path)
    assert isinstance(data.DatasetCorruptError("x"), ValueError)
    assert gzip.decompress(gz.read_bytes())  # the files themselves are left as they were


def test_an_explicit_root_is_searched_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    write_mnist(tmp_path / "env", "MNIST")
    monkeypatch.setenv("REPAIR_DATA", str(tmp_path / "env"))
    assert len(data.load_tensors("mnist", "test")[1]) == 6  # $REPAIR_DATA without a root
    (tmp_path / "empty").mkdir()
    for name in ("mnist", FM):  # neither $REPAIR_DATA nor the system copy stands in for the given root
        with pytest.raises(data.DatasetNotFoundError, match=f"not found in the data root {tmp_path / 'empty'}"):
            data.load_tensors(name, "test", root=tmp_path / "empty")


def test_zoo_retrains_a_valid_checkpoint_of_another_request(tmp_path):
    request = {"arch": "mlp", "depth": 1, "width": 12}
    kwargs = {"epochs": 1, "seed": 0, "train_subset": 64, "batch_size": 32, "device": "cpu", "cache_dir": tmp_path}
    desc = zoo.training_description(request, FM, **{k: kwargs[k] for k in ("epochs", "seed", "train_subset",
                                                                            "batch_size")})
    path = zoo.checkpoint_path(desc, tmp_path)
    other = {"arch": "mlp", "depth": 1, "width": 5, "in_features": 784, "num_classes": 10}
    zoo.save(models.build(other), path, other, {"key": zoo.cache_key(desc), "training": desc})
    with pytest.warns(UserWarning, match=r"does not hold the requested network: its stored config is .*'width': 5"):
        model = zoo.trained(request, FM, **kwargs)
    assert model[1].out_features == 12 and zoo.load_checkpoint(path)["config"]["width"] == 12
    same_config = zoo.load_checkpoint(path)
    torch.save({**same_config, "meta": {**same_config["meta"], "key": "0" * 64}}, path)  # e.g. a renamed file
    with pytest.warns(UserWarning, match="its stored key is '0000"):
        zoo.trained(request, FM, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(zoo.trained(request, FM, **kwargs)[1].weight, model[1].weight)  # now a cache hit


def test_stale_temp_files_of_a_killed_save_are_removed(tmp_path):
    path = zoo.save(models.build(CONFIG), tmp_path / "m.pt", CONFIG)
    stale, fresh, unrelated = tmp_path / ".m.ptabc123.pt.tmp", tmp_path / ".m.ptdef456.pt.tmp", tmp_path / ".n.pt1.pt.tmp"
    for tmp in (stale, fresh, unrelated):
        tmp.write_bytes(b"")
    old = time.time() - 2 * zoo.STALE_TMP_SECONDS
    os.utime(stale, (old, old))
    os.utime(unrelated, (old, old))
    zoo.load(path)
    assert not stale.exists() and fresh.exists() and unrelated.exists()  # a young one may be a save in progress
    os.utime(fresh, (old, old))
    zoo.save(models.build(CONFIG), path, CONFIG)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".n.pt1.pt.tmp", "m.pt"]


def test_save_paths_that_would_replace_an_input_are_refused(tmp_path):
    a = zoo.save(models.build(CONFIG), tmp_path / "a.pt", CONFIG)
    os.link(a, tmp_path / "hard.pt")
    for out in (a, tmp_path / "sub" / ".." / "a.pt", tmp_path / "hard.pt"):
        with pytest.raises(ValueError, match="is the input .*a.pt: writing it would replace that input"):
            zoo.check_save_path(out, inputs=[a])
    assert zoo.check_save_path(tmp_path / "new" / "b.pt", inputs=[a]) == tmp_path / "new" / "b.pt"
    assert not (tmp_path / "new").exists()  # the check creates nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt", "hard.pt"]  # its probe file is gone

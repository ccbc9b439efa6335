"""Training recipes, the trainer, the checkpoint zoo and the ``train`` command, on tiny real data.

Fashion-MNIST (installed by .ci/setup) is the data; every run uses a few hundred examples.
"""

import itertools
import json
import math
import re
import threading
import warnings

import pytest
import torch
from torch import nn

from repairlib import cli, data, models, train, zoo
from repairlib.batchnorm import reset_bn

DATA = "fashion_mnist"
TINY_MLP = {"arch": "mlp", "depth": 2, "width": 32}


def _tiny_fit(model, seed=0, **kwargs):
    kwargs = {"epochs": 1, "train_subset": 256, "batch_size": 64, "device": "cpu", "progress": False, **kwargs}
    return train.fit(model, DATA, seed=seed, **kwargs)


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)


# ---------------------------------------------------------------- recipes and schedules


def test_recipes_follow_table_1():
    r = train.RECIPES
    assert (r["mlp"].batch_size, r["mlp"].lr, r["mlp"].schedule, r["mlp"].weight_decay) == (2000, 0.2, "linear", 0.0)
    assert (r["vgg"].batch_size, r["vgg"].lr, r["vgg"].schedule, r["vgg"].weight_decay) == (500, 0.08, "cosine", 5e-4)
    for arch in ("resnet20", "resnet18"):
        assert (r[arch].batch_size, r[arch].lr, r[arch].schedule, r[arch].weight_decay) == (500, 0.4, "cosine", 1e-4)
    assert r["resnet20"].augment == "flip+translate+cutout" and r["mlp"].augment == "translate"
    assert all(recipe.momentum == 0.9 and recipe.label_smoothing == 0.0 for recipe in r.values())


def test_recipe_drops_flip_and_cutout_on_digits_only():
    assert train.recipe_for("resnet20", "MNIST").augment == "translate"
    assert train.recipe_for("vgg", "svhn").augment == "translate"
    assert train.recipe_for("resnet20", "fashion-mnist").augment == "flip+translate+cutout"
    assert train.recipe_for("resnet20", "cifar10", lr=0.1, batch_size=None).lr == 0.1
    with pytest.raises(ValueError, match="unknown recipe field 'momentun'"):
        train.recipe_for("mlp", "mnist", momentun=0.5)
    with pytest.raises(ValueError, match="no training recipe for arch 'lstm'"):
        train.recipe_for("lstm", "mnist")


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_lr_schedule_warms_up_then_decays_to_zero(schedule):
    recipe = train.Recipe(100, 0.1, schedule, 0.0, "")
    total = 200
    factors = [train.lr_factor(step, total, recipe) for step in range(total)]
    warmup = round(0.05 * total)
    assert factors[0] == pytest.approx(1 / warmup) and factors[warmup - 1] == pytest.approx(1.0)
    assert all(a <= b for a, b in itertools.pairwise(factors[:warmup]))  # rising
    assert all(a >= b for a, b in itertools.pairwise(factors[warmup - 1:]))  # falling
    assert factors[-1] < 0.02
    mid = warmup + (total - warmup) // 2
    assert factors[mid] == pytest.approx(0.5, abs=0.02)  # linear and cosine both cross 1/2 half-way


# ---------------------------------------------------------------- batchnorm training of MLPs


def test_hidden_batchnorm_fuses_into_a_plain_mlp_with_the_same_function():
    torch.manual_seed(0)
    model = models.mlp(depth=3, width=16, in_features=20)
    net = train.with_hidden_batchnorm(model)
    assert sum(isinstance(m, train.FeatureBatchNorm) for m in net) == 3
    for bn in (m for m in net if isinstance(m, train.FeatureBatchNorm)):  # non-trivial statistics and affine
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 2), bn.bias.data.uniform_(-1, 1)
    x = torch.randn(8, 20)
    expected = net.eval()(x)
    train.fuse_hidden_batchnorm(net)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    torch.testing.assert_close(model(x), expected)


def test_feature_batchnorm_matches_batchnorm1d():
    torch.manual_seed(0)
    fast, reference = train.FeatureBatchNorm(6), nn.BatchNorm1d(6)
    reference.load_state_dict(fast.state_dict())
    x = torch.randn(32, 6, requires_grad=True) * 3 + 1
    for bn in (fast, reference):
        bn.weight.data.fill_(1.5)
    y_fast, y_ref = fast(x), reference(x)
    torch.testing.assert_close(y_fast, y_ref)
    torch.testing.assert_close(fast.running_var, reference.running_var)
    (g_fast,), (g_ref,) = (torch.autograd.grad((y * y).sum(), x) for y in (y_fast, y_ref))
    torch.testing.assert_close(g_fast, g_ref)
    fast.eval(), reference.eval()
    torch.testing.assert_close(fast(x), reference(x))


def test_reset_bn_gives_exact_statistics_and_stops_at_max_examples():
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(4, momentum=0.1).eval()
    batches = [(torch.randn(50, 4) * 3 + 2, None) for _ in range(4)]
    reset_bn(bn, batches, max_examples=10_000)
    everything = torch.cat([x for x, _ in batches])
    torch.testing.assert_close(bn.running_mean, everything.mean(0))
    assert not bn.training and bn.momentum == 0.1
    reset_bn(bn, batches, max_examples=100)  # whole batches until 100 inputs: the first two
    torch.testing.assert_close(bn.running_mean, everything[:100].mean(0))


def test_deep_mlp_trains():
    """A 30-hidden-layer MLP (trained with hidden BatchNorm, then fused) clearly lowers its loss."""
    torch.manual_seed(0)
    model = models.mlp(depth=30, width=48)
    result = _tiny_fit(model, epochs=12, train_subset=1024, batch_size=128, lr=0.05)
    assert result["train_loss"] < 0.75 * math.log(10)  # chance level is ln 10 = 2.30
    assert all(isinstance(m, (nn.Flatten, nn.Linear, nn.ReLU)) for m in model)  # still a plain MLP


def test_he_initialised_mlp_trains_plain(monkeypatch):
    """init="he": He-scaled hidden weights, zero biases, and fit trains the network as it is (no
    hidden BatchNorm is wrapped around it)."""
    torch.manual_seed(0)
    model = models.mlp(depth=6, width=256, init="he")
    std = model[3].weight.std().item()
    assert abs(std - math.sqrt(2 / 256)) < 0.1 * math.sqrt(2 / 256) and not model[3].bias.any()
    wrapped = []
    monkeypatch.setattr(train, "with_hidden_batchnorm", lambda m: wrapped.append(m) or m)
    result = _tiny_fit(model, epochs=4, train_subset=1024, batch_size=128, lr=0.05)
    assert not wrapped and result["train_loss"] < 0.75 * math.log(10)
    _tiny_fit(models.mlp(depth=2, width=16))
    assert len(wrapped) == 1  # the default-initialised MLP trains with hidden BatchNorm
    with pytest.raises(ValueError, match="unknown mlp init"):
        models.mlp(2, 8, init="xavier")


# ---------------------------------------------------------------- fit


def test_fit_reports_and_leaves_model_in_eval_mode():
    torch.manual_seed(0)
    model = models.build({**TINY_MLP})
    before = [p.clone() for p in model.parameters()]
    result = _tiny_fit(model)
    assert {"seconds", "images_per_second", "train_loss", "steps", "recipe"} <= result.keys()
    assert result["steps"] == 4 and result["images_per_second"] > 0 and math.isfinite(result["train_loss"])
    assert result["recipe"]["batch_size"] == 64 and result["recipe"]["lr"] == 0.2
    assert not model.training
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_same_seed_gives_identical_weights_and_other_seed_differs():
    def run(seed, config=TINY_MLP, **kw):
        torch.manual_seed(seed)
        model = models.build(config)
        _tiny_fit(model, seed=seed, **kw)
        return model

    assert _same_weights(run(0), run(0))
    assert not _same_weights(run(0), run(1))
    conv = {"arch": "resnet20", "norm": "bn", "in_channels": 1}
    assert _same_weights(run(3, conv, train_subset=64, batch_size=32), run(3, conv, train_subset=64, batch_size=32))


def test_batchnorm_statistics_are_recalibrated_after_training():
    torch.manual_seed(0)
    model = models.build({"arch": "resnet20", "in_channels": 1})
    _tiny_fit(model, train_subset=64, batch_size=32)
    bn = model.norm1
    assert bn.num_batches_tracked.item() == 2  # re-estimated from 64 examples, not the training average
    assert not torch.equal(bn.running_var, torch.ones_like(bn.running_var))


def test_conv_training_hands_back_contiguous_fp32_weights_also_with_bf16():
    torch.manual_seed(0)
    model = models.build({"arch": "resnet20", "norm": "ln", "in_channels": 1})
    result = _tiny_fit(model, train_subset=64, batch_size=32, bf16=True)
    assert math.isfinite(result["train_loss"])
    assert all(p.dtype == torch.float32 and p.is_contiguous() for p in model.parameters())


def test_progress_bar_shows_and_hides(capsys, monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    _tiny_fit(models.build(TINY_MLP), progress=True)
    assert "step" in capsys.readouterr().err
    monkeypatch.setenv("TQDM_DISABLE", "1")
    _tiny_fit(models.build(TINY_MLP), progress=True)
    assert capsys.readouterr().err == ""


def test_grad_clip_bounds_every_step_and_is_off_in_table_1(monkeypatch):
    """With ``grad_clip`` each SGD step sees gradients of total L2 norm at most the bound (a large lr
    makes the unclipped norm exceed it); the paper's recipes do not clip."""
    assert all(recipe.grad_clip is None for recipe in train.RECIPES.values())
    norms, step = [], torch.optim.SGD.step

    def recording_step(self, *args, **kwargs):
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", recording_step)
    torch.manual_seed(0)
    result = _tiny_fit(models.build(TINY_MLP), grad_clip=0.05, lr=1.0)
    assert result["recipe"]["grad_clip"] == 0.05 and len(norms) == 4
    assert max(norms) <= 0.05 * (1 + 1e-4)
    norms.clear()
    torch.manual_seed(0)
    _tiny_fit(models.build(TINY_MLP), lr=1.0)
    assert max(norms) > 0.05  # the bound above was active


@pytest.mark.parametrize("clip", [0, -1.0, True, "1"])
def test_grad_clip_must_be_a_positive_number(clip):
    with pytest.raises(ValueError, match="grad_clip must be a positive number"):
        train.recipe_for("mlp", DATA, grad_clip=clip)


def test_fit_ends_with_the_exponential_average_of_the_weights(monkeypatch):
    trajectory, sgd_step = [], torch.optim.SGD.step

    def step(self, *args, **kwargs):
        out = sgd_step(self, *args, **kwargs)
        trajectory.append([p.detach().clone() for group in self.param_groups for p in group["params"]])
        return out

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    config = {**TINY_MLP, "init": "he"}  # no BatchNorm while training: fit hands back the averaged weights as they are
    for ema in (None, 0.5):
        trajectory.clear()
        torch.manual_seed(0)
        model = models.build(config)
        average = [p.detach().clone() for p in model.parameters()]
        _tiny_fit(model, ema=ema)
        for weights in trajectory:
            average = [0.5 * a + 0.5 * w for a, w in zip(average, weights)]
        expected = trajectory[-1] if ema is None else average
        assert len(trajectory) == 4
        assert all(torch.allclose(p, e, atol=1e-6) for p, e in zip(model.parameters(), expected))
    assert not all(torch.allclose(a, w, atol=1e-4) for a, w in zip(average, trajectory[-1]))


@pytest.mark.parametrize("kwargs, match", [
    ({"epochs": 0}, "epochs must be a positive integer"),
    ({"ema": 1.0}, "ema must be a decay between 0 and 1"),
    ({"device": "tpu9"}, "unknown device 'tpu9'"),
])
def test_fit_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _tiny_fit(models.build(TINY_MLP), **kwargs)


# ---------------------------------------------------------------- zoo


@pytest.fixture
def counted_fit(monkeypatch):
    calls = []

    def fit(*args, **kwargs):
        calls.append(kwargs)
        return train.fit(*args, **kwargs)

    monkeypatch.setattr(zoo, "fit", fit)
    return calls


def _trained(tmp_path, **kwargs):
    kwargs = {"epochs": 1, "seed": 0, "train_subset": 128, "batch_size": 64, "device": "cpu", "cache_dir": tmp_path,
              **kwargs}
    return zoo.trained(TINY_MLP, DATA, **kwargs)


def test_zoo_waits_for_a_network_another_process_is_training(tmp_path, counted_fit):
    """Notebooks run side by side share the zoo: while one trains a network (holding its lock), a
    second request waits and then loads that network instead of training it again."""
    kwargs = {"epochs": 1, "seed": 0, "train_subset": 128, "batch_size": 64}
    desc = zoo.training_description(TINY_MLP, DATA, **kwargs)
    path = zoo.checkpoint_path(desc, tmp_path)
    got = []
    with zoo.training_lock(path):
        waiter = threading.Thread(target=lambda: got.append(_trained(tmp_path)))
        waiter.start()
        waiter.join(timeout=1.0)
        assert waiter.is_alive() and not got  # blocked on the lock
        model, meta = zoo.train_model(desc, device="cpu")  # "the other process" finishes its training
        zoo.save(model, path, desc["config"], meta)
    waiter.join(timeout=60)
    assert len(got) == 1 and _same_weights(got[0], model)
    assert len(counted_fit) == 1  # trained once, by the lock holder
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no lock file left behind


def test_zoo_trains_once_then_returns_cached_weights(tmp_path, counted_fit):
    first = _trained(tmp_path)
    second = _trained(tmp_path)
    assert len(counted_fit) == 1
    assert _same_weights(first, second) and not second.training
    assert [p.name for p in tmp_path.iterdir()] == [p.name for p in tmp_path.glob("mlp-fashion_mnist-s0-*.pt")]
    meta = zoo.load_checkpoint(next(tmp_path.iterdir()))["meta"]
    assert meta["test_examples"] == zoo.CACHED_TEST_EXAMPLES < 10000  # a cached network's meta: a test subset
    _trained(tmp_path, seed=1)  # another seed is another network
    assert len(counted_fit) == 2 and len(list(tmp_path.iterdir())) == 2


def test_zoo_split_part_trains_on_that_biased_half(tmp_path, counted_fit):
    _trained(tmp_path, split_part=1)
    indices = counted_fit[0]["indices"]
    labels = data.load_tensors(DATA, "train")[1]
    assert torch.equal(indices, data.biased_split(labels, 1, 10))
    assert counted_fit[0]["train_subset"] == 128  # a subset of that half


def test_zoo_cache_key_covers_the_training_description():
    def key(config=TINY_MLP, **kw):
        kw = {"epochs": 1, **kw}
        return zoo.cache_key(zoo.training_description(config, DATA, **kw))

    assert key() == key({**TINY_MLP, "in_features": 784, "num_classes": 10})  # defaults spelled out
    assert key() == zoo.cache_key(zoo.training_description(TINY_MLP, "FashionMNIST", epochs=1))
    others = [key(epochs=2), key(seed=1), key(train_subset=100), key(split_part=0), key({**TINY_MLP, "width": 33}),
              key(batch_size=100), key(lr=0.1), key(bf16=True), key(grad_clip=1.0), key(grad_clip=2.0),
              key(augment=""), key(augment="flip"), key(label_smoothing=0.1), key(ema=0.99), key(ema=0.999)]
    assert len({key(), *others}) == 1 + len(others)
    plain = zoo.training_description(TINY_MLP, DATA, epochs=1)
    assert "autocast" not in plain and not {"grad_clip", "ema"} & plain["recipe"].keys()  # keys cached before stay
    assert key(augment="translate") == key() and key(label_smoothing=0.0) == key()  # the MLP recipe's own values


def test_zoo_trains_under_bf16_autocast_when_asked(tmp_path, counted_fit):
    model = _trained(tmp_path, bf16=True)
    assert counted_fit[0]["bf16"] is True
    desc = zoo.training_description(TINY_MLP, DATA, epochs=1, seed=0, train_subset=128, batch_size=64, bf16=True)
    assert zoo.load_checkpoint(zoo.checkpoint_path(desc, tmp_path))["meta"]["training"]["autocast"] == "bf16"
    assert next(model.parameters()).dtype == torch.float32  # autocast trains fp32 weights
    with pytest.raises(ValueError, match="bf16 must be True or False"):
        zoo.training_description(TINY_MLP, DATA, epochs=1, bf16="yes")


def test_zoo_retrains_a_corrupt_checkpoint(tmp_path, counted_fit):
    desc = zoo.training_description(TINY_MLP, DATA, epochs=1, seed=0, train_subset=128, batch_size=64)
    path = zoo.checkpoint_path(desc, tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.warns(UserWarning, match="is not a valid repairlib checkpoint"):
        model = _trained(tmp_path)
    assert len(counted_fit) == 1
    assert _same_weights(zoo.load(path), model)


def test_cache_dir_comes_from_argument_then_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("REPAIR_ZOO", str(tmp_path / "env"))
    assert zoo.resolve_cache_dir() == tmp_path / "env"
    assert zoo.resolve_cache_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("REPAIR_ZOO")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert zoo.resolve_cache_dir() == tmp_path / "home" / ".cache" / "repairlib" / "zoo"


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    config = {"arch": "resnet20", "norm": "ln", "in_channels": 1}
    model = models.build(config).eval()
    path = zoo.save(model, tmp_path / "sub" / "r20.pt", config, {"test_accuracy": 0.5})
    return model, path


def test_save_is_atomic_and_load_rebuilds_from_the_file_alone(saved):
    model, path = saved
    assert [p.name for p in path.parent.iterdir()] == ["r20.pt"]  # no temp file left behind
    loaded = zoo.load(path)
    assert type(loaded) is type(model) and not loaded.training
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(loaded(x), model(x))
    assert zoo.load_checkpoint(path)["meta"] == {"test_accuracy": 0.5}


def test_failed_save_leaves_neither_temp_nor_target(tmp_path, monkeypatch):
    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(zoo.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        zoo.save(models.build(TINY_MLP), tmp_path / "m.pt", TINY_MLP)
    assert list(tmp_path.iterdir()) == []


def test_load_rejects_truncated_foreign_and_mismatched_files(saved, tmp_path):
    _, path = saved
    blob = path.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(blob[: len(blob) // 2])
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    mismatched = tmp_path / "mismatched.pt"
    ckpt = torch.load(path, weights_only=True)
    torch.save({**ckpt, "config": {**ckpt["config"], "width": 2}}, mismatched)
    for bad in (truncated, foreign, mismatched):
        with pytest.raises(ValueError, match=f"{bad.name} is not a valid repairlib checkpoint: "):
            zoo.load(bad)
    with pytest.raises(FileNotFoundError):
        zoo.load(tmp_path / "missing.pt")


def test_load_with_expected_arch(saved):
    _, path = saved
    assert isinstance(zoo.load(path, expect_arch="resnet20"), models.ResNet)
    with pytest.raises(ValueError, match="holds a 'resnet20' network, expected 'vgg'"):
        zoo.load(path, expect_arch="vgg")


# ---------------------------------------------------------------- command line


def test_train_command_on_a_tiny_real_run(tmp_path, capsys):
    out = tmp_path / "m.pt"
    argv = ["train", "--arch", "mlp", "--depth", "2", "--width", "32", "--dataset", "fashion-mnist",
            "--train-subset", "512", "--epochs", "1", "--seed", "3", "--out", str(out), "--json"]
    assert cli.main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"test_accuracy", "test_loss", "seconds", "images_per_second"} <= result.keys()
    assert 0.0 <= result["test_accuracy"] <= 1.0 and result["test_loss"] > 0 and result["seed"] == 3
    meta = zoo.load_checkpoint(out)["meta"]
    assert meta["test_accuracy"] == result["test_accuracy"] and meta["epochs"] == 1
    assert isinstance(zoo.load(out, expect_arch="mlp"), models.MLP)


@pytest.mark.parametrize("args, match", [
    (["--arch", "transformer", "--dataset", DATA], "unknown arch 'transformer'"),
    (["--arch", "mlp", "--dataset", "imagenet22k"], "unknown data set 'imagenet22k'"),
    (["--arch", "resnet20", "--width", "0", "--dataset", DATA], "width must be a positive number \\(a channel multiplier\\), got 0"),
    (["--arch", "mlp", "--depth", "0", "--dataset", DATA], "depth must be a positive integer, got 0"),
    (["--arch", "mlp", "--dataset", "mnist", "--data-root", "EMPTY"], "data set 'mnist' \\(train\\) not found"),
    (["--arch", "mlp", "--dataset", DATA, "--train-subset", "0"], "--train-subset must be a positive integer"),
])
def test_train_command_bad_input_is_one_error_line_and_no_file(args, match, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("REPAIR_DOWNLOAD", "0")
    monkeypatch.delenv("REPAIR_DATA", raising=False)
    (tmp_path / "empty").mkdir()
    args = [str(tmp_path / "empty") if a == "EMPTY" else a for a in args]
    out = tmp_path / "model.pt"
    assert cli.main(["train", *args, "--epochs", "1", "--out", str(out), "--json"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert re.search(match, err)
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["empty"]


def test_bf16_falls_back_to_fp32_on_a_gpu_without_native_bf16(monkeypatch):
    from repairlib import train

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    with pytest.warns(UserWarning, match="Tesla T4 has no native bf16"):
        ctx = train._autocast(torch.device("cuda"), True)
    assert ctx._enabled is False  # nothing of CUDA is touched: the context is only built, not entered


@pytest.mark.parametrize("native", [True, False])
def test_bf16_on_the_cpu_is_kept_as_asked_and_warns_where_it_is_emulated(monkeypatch, native):
    import warnings

    from repairlib import train

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert train.native_bf16("cpu") is native
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert train._autocast(torch.device("cpu"), True)._enabled is True
    assert [str(w.message).startswith("this CPU has no AMX") for w in caught] == ([] if native else [True])
    assert train.resolve_bf16("auto", "cpu") is native
    assert train.resolve_bf16(False, "cpu") is False and train.resolve_bf16(True, "cpu") is True
    with pytest.raises(ValueError, match="bf16 must be True, False or 'auto'"):
        train.resolve_bf16("yes", "cpu")


@pytest.mark.parametrize("native", [True, False])
def test_zoo_resolves_auto_bf16_to_what_the_device_has_in_its_key(tmp_path, counted_fit, monkeypatch, native):
    from repairlib import train

    monkeypatch.setattr(train, "native_bf16", lambda device=None: native)
    model = _trained(tmp_path, bf16="auto")
    assert counted_fit[0]["bf16"] is (True if native else None)  # fit's own default is fp32 on the CPU
    assert model.repairlib_training == zoo.training_description(
        TINY_MLP, DATA, epochs=1, seed=0, train_subset=128, batch_size=64, bf16=native)
    assert _trained(tmp_path, bf16=native) is not None and len(counted_fit) == 1  # the same zoo entry


def test_a_network_at_chance_is_flagged_whenever_the_zoo_hands_it_out():
    from repairlib import zoo

    desc = zoo.training_description({"arch": "mlp", "depth": 2, "width": 8}, "fashion_mnist", epochs=1, seed=3)
    net = nn.Linear(2, 2)
    net.repairlib_test_accuracy = 0.089
    with pytest.warns(zoo.ChanceWarning, match=r"mlp seed 3 on fashion_mnist reached 8.9% .*near chance \(10%\)"):
        zoo.tagged(net, desc)
    net.repairlib_test_accuracy = 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert zoo.tagged(net, desc).repairlib_training == desc


def test_fit_trains_with_the_augmentation_it_is_given(monkeypatch):
    """``augment`` overrides the recipe's augmentation (``""``: none); a bad one fails before any step."""
    seen = []
    loader = train.data.loader

    def spy(*args, **kwargs):
        seen.append(kwargs.get("augment"))
        return loader(*args, **kwargs)

    monkeypatch.setattr(train.data, "loader", spy)
    model = models.build({"arch": "resnet20", "width": 0.25, "norm": "bn", "in_channels": 1})
    result = _tiny_fit(model, train_subset=64, batch_size=32, augment="")
    assert result["recipe"]["augment"] == "" and seen[0] == ""  # the training batches: no augmentation
    assert _tiny_fit(model, train_subset=64, batch_size=32)["recipe"]["augment"] == "flip+translate+cutout"
    with pytest.raises(ValueError, match="unknown augmentation 'rotate'"):
        _tiny_fit(model, train_subset=64, batch_size=32, augment="rotate")


def test_a_resnet20_with_four_channel_strided_shortcuts_trains_on_any_cpu():
    """A ResNet20 x0.25 (a 1x1 stride-2 shortcut from 4 channels) trains in a one-thread process: in
    channels_last that convolution's weight gradient corrupted the heap on an AVX2-only CPU, so ``fit``
    keeps such nets contiguous there (a subprocess, so a crash fails this test instead of the run)."""
    import subprocess
    import sys

    code = ("import torch; torch.set_num_threads(1)\n"
            "from repairlib import models, train\n"
            "m = models.build({'arch': 'resnet20', 'width': 0.25, 'norm': 'bn', 'in_channels': 1})\n"
            "r = train.fit(m, 'fashion_mnist', epochs=1, train_subset=96, batch_size=32, device='cpu', progress=False)\n"
            "print('trained', r['steps'])\n")
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "trained 3" in done.stdout, done.stderr[-2000:]
    model = models.build({"arch": "resnet20", "width": 0.25, "norm": "bn", "in_channels": 1})
    wide = models.build({"arch": "resnet20", "width": 0.5, "norm": "bn", "in_channels": 1})
    avx512 = torch.backends.cpu.get_cpu_capability().startswith(("AVX512", "AMX"))
    assert train.channels_last_is_safe(model, "cpu") is avx512 and train.channels_last_is_safe(wide, "cpu")
    assert not train.channels_last_is_safe(models.build({"arch": "mlp", "depth": 2, "width": 8}), "cpu")

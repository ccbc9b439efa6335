"""The book's machinery: profiles, the papermill runner, provenance, the results table, the plots."""

import contextlib
import io
import json
import os
from pathlib import Path

import nbformat
import pytest
import torch
from matplotlib.figure import Figure

from repairlib import book, cli, plots

ROOT = Path(__file__).resolve().parents[1]


# --- profiles --------------------------------------------------------------------------------------

def test_every_profile_defines_every_section_with_the_same_settings():
    for section in book.SECTIONS:
        keys = {profile: set(book.settings(profile, section)) for profile in book.PROFILES}
        assert keys["smoke"] == keys["cpu"] == keys["paper"], section
        assert {"seeds", "stats_examples", "eval_examples", "alphas"} <= keys["cpu"], section


def test_cpu_profile_is_fashion_mnist_and_smoke_is_one_epoch():
    for section in book.SECTIONS:
        cpu, smoke = book.settings("cpu", section), book.settings("smoke", section)
        datasets = [v for k, v in cpu.items() if k == "dataset" or k.endswith("_dataset")]
        datasets += list(cpu.get("datasets", []))
        assert set(datasets) == {"fashion_mnist"}, section
        epochs = [v for k, v in smoke.items() if k == "epochs" or k.endswith("_epochs")]
        assert epochs and all(e == 1 for e in epochs), section


def test_settings_overrides_and_validation():
    s = book.settings("cpu", "5.1", widths=[1, 4], epochs=None)
    assert s["widths"] == [1, 4]
    assert s["epochs"] == book.settings("cpu", "5.1")["epochs"]  # None keeps the profile's value
    s["norms"] = ("bn",)  # a fresh copy every time
    assert book.settings("cpu", "5.1")["norms"] != ("bn",)
    with pytest.raises(ValueError, match="valid profiles: smoke, cpu, paper"):
        book.settings("gpu", "3")
    with pytest.raises(ValueError, match=r"valid sections: quickstart, 3, 4, 5\.1"):
        book.settings("cpu", "6")
    with pytest.raises(ValueError, match="'widht'.*valid settings:.*widths"):
        book.settings("cpu", "5.1", widht=3)


def test_recipe_overrides_reach_every_network_and_the_paper_profile_keeps_table_1(monkeypatch):
    from repairlib import zoo

    assert all(book.recipe_overrides(book.settings("paper", s)) == {} for s in book.SECTIONS)
    cfg = book.settings("cpu", "3")
    assert book.recipe_overrides(cfg) == {"augment": "", "label_smoothing": 0.1}
    assert book.recipe_overrides({**cfg, "mlp_augment": "translate"}, "mlp")["augment"] == "translate"
    seen = []
    monkeypatch.setattr(zoo, "trained", lambda config, dataset, **kwargs: seen.append(kwargs))
    book.trained_pair(cfg, "conv")
    assert [(k["augment"], k["label_smoothing"], k["seed"]) for k in seen] == [("", 0.1, 0), ("", 0.1, 1)]
    with pytest.raises(ValueError, match="'lr'; valid: augment, label_smoothing, ema"):
        book.recipe_overrides({"recipe_overrides": {"lr": 0.1}})


@pytest.mark.parametrize("text, value", [
    ("3", 3), ("0.5", 0.5), ("[1, 2, 4]", [1, 2, 4]), ('{"arch": "mlp"}', {"arch": "mlp"}),
    ("null", None), ("None", None), ("(1, 2)", (1, 2)), ("true", True), ("fashion_mnist", "fashion_mnist"),
])
def test_parse_value(text, value):
    assert book.parse_value(text) == value


# --- the runner ------------------------------------------------------------------------------------

def _notebook(path: Path, *cells, parameters=True):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    if parameters:
        cell = nbformat.v4.new_code_cell(
            'import os\nprofile = os.environ.get("REPAIR_PROFILE", "cpu")\nwidths = None\nepochs = None')
        cell.metadata["tags"] = ["parameters"]
        nb.cells.append(cell)
    nb.cells += [nbformat.v4.new_code_cell(c) for c in cells]
    nbformat.write(nb, str(path))
    return path


GOOD = [
    "import time\nstart = time.time()",
    'print(f"profile={profile} widths={widths!r} epochs={epochs!r} cwd={os.getcwd()}")',
    'print(f"TQDM_DISABLE={os.environ.get(\'TQDM_DISABLE\')} OMP_NUM_THREADS={os.environ.get(\'OMP_NUM_THREADS\')}")',
    ('from repairlib import book\n'
    'book.show_provenance(profile, {"dataset": "fashion_mnist", "seeds": [0, 1]}, start)'),
]


@pytest.fixture(scope="module", params=[1, 2], ids=["jobs1", "jobs2"])
def run(tmp_path_factory, request):
    """One runner call on two throwaway notebooks (one after the other, or side by side): one raises,
    the other reports its parameters."""
    src = tmp_path_factory.mktemp("notebooks")
    out = tmp_path_factory.mktemp("executed")
    _notebook(src / "a_fails.ipynb", 'raise RuntimeError("boom from the notebook")', 'print("never")')
    _notebook(src / "b_good.ipynb", *GOOD)
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), pytest.MonkeyPatch.context() as mp:
        mp.delenv("TQDM_DISABLE", raising=False)
        mp.delenv("OMP_NUM_THREADS", raising=False)
        status = cli.main(["book", "--profile", "smoke", "--notebooks", str(src), "--out", str(out),
                           "--no-build", "-p", "widths", "[1, 2]", "--jobs", str(request.param)])
        env_after = (os.environ.get("TQDM_DISABLE"), os.environ.get("OMP_NUM_THREADS"))
    return {"status": status, "src": src, "out": out, "lines": stdout.getvalue().splitlines(),
            "env_after": env_after, "jobs": request.param}


def _text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            parts.append(o.get("text", ""))
            parts += [str(v) for v in o.get("data", {}).values()]
            parts += [o.get("ename", ""), o.get("evalue", "")]
    return "\n".join(parts)


@pytest.mark.slow
def test_runner_keeps_going_past_a_failing_notebook(run):
    assert run["status"] == 1
    assert (run["out"] / "a_fails.ipynb").exists() and (run["out"] / "b_good.ipynb").exists()
    failed = _text(nbformat.read(str(run["out"] / "a_fails.ipynb"), as_version=4))
    assert "boom from the notebook" in failed and "never" not in failed
    progress = [line for line in run["lines"] if line.startswith("[")]
    assert len(progress) == 2 and {line[:5] for line in progress} == {"[1/2]", "[2/2]"}
    failed_line, good_line = (next(line for line in progress if name in line) for name in ("a_fails", "b_good"))
    assert "FAILED" in failed_line and "boom" in failed_line
    assert good_line.split()[-1] == "ok"


@pytest.mark.slow
def test_runner_injects_profile_and_overrides(run):
    nb = nbformat.read(str(run["out"] / "b_good.ipynb"), as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and 'profile = "smoke"' in injected[0].source
    tags = [c.metadata.get("tags", []) for c in nb.cells]
    # the injected cell sits above the parameters cell: rerun by a reader, the parameters cell counts
    assert tags.index(["injected-parameters"]) + 1 == next(i for i, t in enumerate(tags) if "parameters" in t)
    assert injected[0].source.startswith(book.runner.INJECTED_NOTE)
    text = _text(nb)
    # papermill's value overrides the parameters cell; an override not given stays None
    assert f"profile=smoke widths=[1, 2] epochs=None cwd={run['src']}" in text
    assert "TQDM_DISABLE=1" in text  # no progress bars in executed pages
    # side by side, each kernel gets its share of the cores
    threads = str(max(1, (os.cpu_count() or 1) // 2)) if run["jobs"] == 2 else "None"
    assert f"OMP_NUM_THREADS={threads}" in text
    assert run["env_after"] == (None, None)  # and the runner restored its own environment


@pytest.mark.slow
def test_executed_copy_ends_with_provenance(run):
    text = _text(nbformat.read(str(run["out"] / "b_good.ipynb"), as_version=4))
    assert "Provenance of this page" in text
    for field in ("| profile | smoke |", "| dataset | fashion_mnist |", "| seeds | [0, 1] |", "| commit |",
                  "| device |", "| wall time s |", f"| torch | {torch.__version__} |"):
        assert field in text


def test_runner_rejects_unknown_parameters_sections_and_notebooks_without_parameters(tmp_path, capsys):
    _notebook(tmp_path / "n.ipynb", "x = 1")
    assert cli.main(["book", "--notebooks", str(tmp_path), "--no-build", "-p", "widht", "2"]) == 2
    assert "'widht' are not declared" in capsys.readouterr().err
    assert cli.main(["book", "--notebooks", str(tmp_path), "--no-build", "--only", "5.9"]) == 2
    assert "valid sections: quickstart, 3, 4" in capsys.readouterr().err
    assert cli.main(["book", "--notebooks", str(tmp_path), "--no-build", "--only", "5.1"]) == 2
    assert "05_1_normalization.ipynb does not exist" in capsys.readouterr().err
    _notebook(tmp_path / "bare.ipynb", "x = 1", parameters=False)
    assert cli.main(["book", "--notebooks", str(tmp_path), "--no-build"]) == 2
    assert "has no code cell tagged 'parameters'" in capsys.readouterr().err


def test_executed_copies_go_where_the_toc_expects_them(tmp_path):
    assert book.executed_dir("cpu", tmp_path) == tmp_path / "book" / "executed" / "cpu"
    assert book.executed_dir("paper", tmp_path) == tmp_path / "book" / "executed" / "paper"
    assert book.executed_dir("smoke", tmp_path).parts[-3:] == ("_build", "executed", "smoke")  # never committed
    toc = (ROOT / "_toc.yml").read_text()
    for stem in book.NOTEBOOKS.values():
        assert f"file: book/executed/cpu/{stem}\n" in toc


def test_select_notebooks_reading_order_and_section_ids(tmp_path):
    for stem in ("C_no_alignment", "05_1_normalization", "00_quickstart", "_draft", "zz_extra"):
        _notebook(tmp_path / f"{stem}.ipynb", "x = 1")
    assert [p.stem for p in book.select_notebooks(tmp_path)] == [
        "00_quickstart", "05_1_normalization", "C_no_alignment", "zz_extra"]
    assert [p.stem for p in book.select_notebooks(tmp_path, ["C", "quickstart", "zz_extra", "C"])] == [
        "C_no_alignment", "00_quickstart", "zz_extra"]


def test_run_book_returns_a_summary_and_prints_nothing(tmp_path, capsys):
    src, out = tmp_path / "notebooks", tmp_path / "out"
    src.mkdir()
    _notebook(src / "fails.ipynb", 'raise RuntimeError("boom")')
    lines = []
    summary = book.run_book("smoke", notebooks=src, out=out, no_build=True, jobs=1, log=lines.append)
    assert capsys.readouterr().out == ""  # progress goes to log only
    assert summary["failed"] == ["fails"] and summary["ok"] is False and summary["built"] is None
    assert summary["out_dir"] == out and summary["profile"] == "smoke" and summary["seconds"] >= 0
    assert list(summary["executed"]) == ["fails"] and "boom" in summary["executed"]["fails"]["error"]
    assert lines[0] == f"book: 1 notebook(s) at profile smoke -> {out}" and "1 failed" in lines[-1]
    with pytest.raises(ValueError, match="not a Python identifier"):
        book.parse_overrides([("not-a-name", "1")])
    assert book.parse_overrides([("widths", "[1, 2]")]) == {"widths": [1, 2]}


# --- results ---------------------------------------------------------------------------------------

def test_results_round_trip_into_the_table(tmp_path, monkeypatch):
    monkeypatch.delenv("REPAIR_RESULTS", raising=False)
    params = book.settings("cpu", "5.1")
    assert book.save_results("5.1", "smoke", params, {"resnet20x8_bn": {"after": "1%"}}) is None
    path = book.save_results("5.1", "cpu", params, {"resnet20x8_bn": {
        "before": "41.0%", "after": "88.5%", "endpoints": "90.1 / 90.3%", "note": "ResNet20 x2"}},
        directory=tmp_path)
    assert path == tmp_path / "5.1_cpu.json"
    assert json.loads(path.read_text())["provenance"]["profile"] == "cpu"
    table = book.results_table(tmp_path)
    row = next(line for line in table.splitlines() if "ResNet20 x8 BatchNorm" in line)
    assert "| 41.0% → 88.5% (endpoints 90.1 / 90.3%); ResNet20 x2 *(cpu, fashion_mnist)* |" in row
    assert "| 32.3% → 94.4%" in row  # the paper's numbers stay beside ours
    assert row.count("|") == 5  # four columns: setting, section, paper, ours
    assert table.count("pending") == len(book.REFERENCE) - 1
    with pytest.raises(ValueError, match="unknown result key"):
        book.save_results("5.1", "cpu", params, {"resnet20x9": {}}, directory=tmp_path)
    page = tmp_path / "results.md"
    page.write_text(f"intro\n{book.RESULTS_BEGIN}\nold\n{book.RESULTS_END}\noutro\n")
    assert book.write_results_page(page, tmp_path) is True
    assert "old" not in page.read_text() and "88.5%" in page.read_text()
    assert page.read_text().endswith("outro\n")
    assert book.write_results_page(page, tmp_path) is False


def test_quality_table_from_a_benchmark_record(tmp_path):
    assert "Not measured yet" in book.quality_table(tmp_path)
    mid = {"accuracy": 0.5, "loss": 1.25}
    row = {"family": "mlp", "seeds": [0, 1], "training": {"train_subset": None, "epochs": 20},
           "endpoint_a": {"accuracy": 0.9, "loss": 0.3}, "endpoint_b": {"accuracy": 0.8, "loss": 0.4},
           "naive": mid, "aligned": mid, "repair": {"accuracy": 0.8, "loss": 0.5}, "repair_closed_form": mid,
           "repair_all": mid, "reset_bn": None, "reduction_accuracy": 0.8333, "reduction_loss": 0.6}
    record = {"dataset": "fashion_mnist", "test_examples": 10000, "stats_examples": 5000, "device": "cpu",
              "date": "2026-11-22T17:00:00+00:00", "results": [row]}
    (tmp_path / book.QUALITY_FILE).write_text(json.dumps(record))
    line = book.quality_table(tmp_path).splitlines()[-1]
    assert line.startswith("| mlp | 0, 1 | 20 ep. on all 60,000 images | 90.0% (0.300) / 80.0% (0.400) |")
    assert line.endswith("| 80.0% (0.500) | 50.0% (1.250) | 50.0% (1.250) | – | 83.3% / 60.0% | – |")
    row.update(reduction_accuracy_eq1=0.75, reduction_loss_eq1=0.5)
    (tmp_path / book.QUALITY_FILE).write_text(json.dumps(record))
    assert book.quality_table(tmp_path).splitlines()[-1].endswith("| 83.3% / 60.0% | 75.0% / 50.0% |")
    book.load_results(tmp_path)  # the quality record is not mistaken for a notebook's results record
    page = tmp_path / "results.md"
    page.write_text(f"{book.RESULTS_BEGIN}\n{book.RESULTS_END}\n{book.QUALITY_BEGIN}\nold\n{book.QUALITY_END}\n")
    assert book.write_results_page(page, tmp_path) is True
    assert "83.3% / 60.0%" in page.read_text() and "old" not in page.read_text()


def test_markdown_table_is_the_one_table_writer():
    assert book.markdown_table(["a", "b"], [["1", "2"], [3, "x \\| y"]]) == (
        "| a | b |\n|---|---|\n| 1 | 2 |\n| 3 | x \\| y |\n")
    assert book.markdown_table(["only"], []) == "| only |\n|---|\n"


def test_paper_vs_ours_puts_the_numbers_side_by_side():
    reference = (("k1", "Net A, data", "5.1", "30%", "90%", "93%"), ("k2", "Net B", "5.2", "", "< 1", ""))
    table = book.paper_vs_ours({"k2": {"after": "0.5", "note": "x2 | FM"},
                                "k1": {"before": "40.0%", "after": "80.0%", "endpoints": "85%"}}, reference)
    lines = table.strip().splitlines()
    assert len(lines) == 4 and lines[0].startswith("| Setting")
    assert lines[2] == "| Net B | < 1 | 0.5 | x2 \\| FM |"  # rows in the order given, pipes escaped
    assert lines[3] == "| Net A, data | 30% → 90% (endpoints 93%) | 40.0% → 80.0% (endpoints 85%) | – |"
    with pytest.raises(ValueError, match="unknown reference key"):
        book.paper_vs_ours({"k3": {}}, reference)
    assert "ResNet20 x8 BatchNorm" in book.paper_vs_ours({"resnet20x8_bn": {"after": "1%"}})


def test_committed_results_page_is_up_to_date():
    text = (ROOT / "book" / "results.md").read_text()
    generated = text.split(book.RESULTS_BEGIN)[1].split(book.RESULTS_END)[0].strip()
    stale = "book/results.md is stale: run python -c 'import repairlib.book as b; b.write_results_page()'"
    assert generated == book.results_table(ROOT / "book" / "results").strip(), stale
    quality = text.split(book.QUALITY_BEGIN)[1].split(book.QUALITY_END)[0].strip()
    assert quality == book.quality_table(ROOT / "book" / "results").strip(), stale
    index = text.split(book.results.COVERAGE_BEGIN)[1].split(book.results.COVERAGE_END)[0].strip()
    assert index == book.coverage_index(ROOT / "book" / "results").strip(), stale
    intro = (ROOT / "book" / "intro.md").read_text()
    index = intro.split(book.results.FIGURES_BEGIN)[1].split(book.results.FIGURES_END)[0].strip()
    assert index == book.results.figure_index().strip(), stale.replace("results.md", "intro.md")


def test_figure_index_reads_the_captions(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Section 4: REPAIR")])
    cell = nbformat.v4.new_code_cell("fig")
    cell.metadata["mystnb"] = {"figure": {"caption": "Midpoints (paper Figs. 1 left and 3 right)."}}
    nb.cells.append(cell)
    nbformat.write(nb, str(tmp_path / "04_repair.ipynb"))
    rows = book.results.figure_index(tmp_path).splitlines()[2:]
    assert len(rows) == len(book.figure_panels())  # one row per panel of the claims table
    assert rows[0] == "| Fig. 1 left | [Section 4: REPAIR](executed/cpu/04_repair.ipynb) |"
    assert rows[1] == "| Fig. 1 middle | not reproduced yet |"
    assert rows[8].startswith("| Fig. 3 right | [Section 4") and rows[6] == "| Fig. 3 left | not reproduced yet |"


def test_provenance_fields():
    info = book.provenance_record("paper", {"mlp_dataset": "mnist", "conv_dataset": "cifar10", "seeds": (3, 4)}, 0.0)
    assert info["profile"] == "paper" and info["dataset"] == "mnist, cifar10" and info["seeds"] == [3, 4]
    assert info["wall_time_s"] > 0 and info["torch"] == torch.__version__
    assert info["commit"] != "unknown" if (ROOT / ".git").exists() else True
    pairs = book.provenance_record("cpu", {"seeds": (0, 1), "seed_pairs": ((0, 1), (2, 3))})
    assert pairs["seeds"] == [[0, 1], [2, 3]]  # the pairs the page measured, not only the first
    assert book.provenance_record("cpu", {})["wall_time_s"] is None
    with pytest.raises(ValueError, match="unknown profile"):
        book.provenance_record("fast", {})


# --- the package ----------------------------------------------------------------------------------

def test_package_names_and_import_direction():
    import ast

    assert book.provenance.__name__ == "repairlib.book.provenance"  # the module, not hidden by a function
    assert book.run_book is book.runner.run_book and set(book.__all__) <= set(dir(book))
    allowed = {"profiles": set(), "provenance": {"profiles"}, "coverage": {"profiles"}, "evidence": {"coverage"},
               "results": {"profiles", "provenance", "coverage", "evidence"},
               "runner": {"profiles", "provenance", "results"}}
    for name, may_import in allowed.items():
        tree = ast.parse((ROOT / "repairlib" / "book" / f"{name}.py").read_text())
        imported = {node.module.rsplit(".", 1)[-1] for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("repairlib.book")}
        assert imported <= may_import, f"repairlib.book.{name} imports {imported - may_import}"
    baselines = (ROOT / "repairlib" / "baselines.py").read_text()
    assert "repairlib.book" not in baselines  # a library module: it does not import the book


# --- plots -----------------------------------------------------------------------------------------

def test_curve_and_barrier_plots_label_and_validate():
    fig = plots.curve([0, 0.5, 1], {"before": [0.9, 0.3, 0.9], "after": torch.tensor([0.9, 0.8, 0.9])},
                      "test accuracy", "MLP")
    ax = fig.axes[0]
    assert isinstance(fig, Figure) and ax.get_ylabel() == "test accuracy" and ax.get_title() == "MLP"
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["before", "after"]
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)  # the legend lies below the axes, outside the data
    assert legend.get_window_extent(renderer).y1 <= ax.get_window_extent(renderer).y0
    with pytest.raises(ValueError, match="'after' has 2 values for 3"):
        plots.curve([0, 0.5, 1], {"after": [1, 2]}, "loss")
    fig = plots.barrier_vs([1, 2, 4, 8], {"BN": [0.4, 0.3, 0.2, 0.1]}, "width", "barrier", log2=True)
    assert fig.axes[0].get_xscale() == "log" and [t.get_text() for t in fig.axes[0].get_xticklabels()] == [
        "1", "2", "4", "8"]
    with pytest.raises(ValueError, match="positive"):
        plots.barrier_vs([0, 1], {"x": [1, 2]}, "width", "barrier", log2=True)
    fig = plots.barrier_vs([11, 13, 16, 19], {"VGG": [0.5, 0.6, 0.7, 0.8]}, "depth", "barrier")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["11", "13", "16", "19"]  # no 12.5


def test_layer_channel_and_filter_plots(tmp_path):
    fig = plots.layer_ratios({"MLP x10": [0.9, 0.7, 0.5], "MLP x20": [0.9] * 6})
    assert [len(line.get_xdata()) for line in fig.axes[0].get_lines()[:2]] == [3, 6]
    goal = torch.rand(32)
    fig = plots.channel_stats(goal, {"before": goal / 2, "after": goal})
    assert len(fig.axes[0].collections) == 2
    fig = plots.filters({"A": torch.randn(16, 3, 7, 7), "B": torch.randn(8, 1, 3, 3)})
    assert [ax.get_title() for ax in fig.axes] == ["A", "B"]
    assert fig.axes[0].get_images()[0].get_array().shape == (4 * 8 - 1, 4 * 8 - 1, 3)
    fig.savefig(tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 1000
    with pytest.raises(ValueError, match=r"\[C, in, kh, kw\]"):
        plots.filters(torch.randn(3, 3))


def test_plots_need_no_display():
    backend = plots.matplotlib.get_backend().lower()
    assert os.environ.get("DISPLAY") or backend in ("agg", "module://matplotlib_inline.backend_inline")


def test_previous_seconds_orders_by_the_last_executed_copy(tmp_path):
    timed = _notebook(tmp_path / "timed.ipynb", "x = 1")
    nb = nbformat.read(str(timed), as_version=4)
    nb.metadata["papermill"] = {"duration": 12.5}
    nbformat.write(nb, str(timed))
    assert book.previous_seconds(timed) == 12.5
    assert book.previous_seconds(_notebook(tmp_path / "never_run.ipynb", "x = 1")) == float("inf")
    assert book.previous_seconds(tmp_path / "missing.ipynb") == float("inf")


def test_smoke_pages_show_a_banner_that_their_numbers_are_not_results(monkeypatch):
    import IPython
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython, "get_ipython", lambda: type("Shell", (), {"kernel": object()})())
    monkeypatch.setattr(IPython.display, "display", lambda obj: shown.append(obj.data))
    book.settings("cpu", "4")
    assert not shown
    book.settings("smoke", "4")
    assert len(shown) == 1 and "not results" in shown[0]


def test_a_notebook_run_by_hand_writes_its_results_beside_itself(tmp_path, monkeypatch):
    monkeypatch.delenv("REPAIR_RESULTS", raising=False)
    monkeypatch.chdir(tmp_path)
    path = book.save_results("4", "cpu", {}, {})
    assert path == tmp_path / "repair-results" / "4_cpu.json" and path.exists()
    assert book.book_results_dir() == book.book_root() / "book" / "results"
    monkeypatch.setenv("REPAIR_RESULTS", str(tmp_path / "elsewhere"))
    assert book.save_results("4", "cpu", {}, {}) == tmp_path / "elsewhere" / "4_cpu.json"


def _record(method, alpha, accuracy, width=1, norm="bn", seeds=(0, 1)):
    return {"figure": None, "arch": "resnet20", "width": width, "depth": None, "norm": norm,
            "dataset": "fashion_mnist", "seeds": list(seeds), "n_test": 100, "alpha": alpha, "method": method,
            "accuracy": accuracy, "loss": 1.0, "train": {"epochs": 1}}


def test_fig1_right_barriers_come_from_the_plain_records(tmp_path):
    curve = {0.0: 0.9, 0.5: 0.5, 1.0: 0.8}  # line at 0.5: 0.85 -> barrier 35 points before
    records = [_record("aligned", t, a) for t, a in curve.items()]
    records += [_record("repair", 0.5, 0.75), _record("repair", 0.5, 0.1, width=2)]  # width 2 lacks a curve
    records += [_record("aligned", t, a, seeds=(2, 3)) for t, a in curve.items()] + [_record("repair", 0.5, 0.8, seeds=(2, 3))]
    points = book.results.barrier_points(records)
    assert list(points) == [("resnet20", "bn")] and list(points["resnet20", "bn"]) == [(1, None)]
    (b1, a1), (b2, a2) = points["resnet20", "bn"][1, None]
    assert b1 == pytest.approx(35.0) and a1 == pytest.approx(10.0) and b2 == pytest.approx(35.0) and a2 == pytest.approx(5.0)
    book.save_results("5.1", "cpu", {}, {}, directory=tmp_path, measurements=records)
    block = book.results.fig1_right_block(tmp_path)
    assert block.startswith("```{figure} results/fig1_right_cpu.png") and "Paper Fig. 1 right" in block
    assert "2 seed pairs in 1 setting, 100 test images" in block and (tmp_path / "fig1_right_cpu.png").stat().st_size > 0
    assert book.results.caption_panels(block) == [(1, "right")]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "not measured yet" in book.results.fig1_right_block(empty)


def test_fig8_right_needs_all_four_curves(tmp_path):
    curve = {0.0: 0.9, 0.5: 0.5, 1.0: 0.8}
    records = [_record("aligned", t, a) for t, a in curve.items()]
    records += [_record(m, 0.5, a) for m, a in (("reset_bn", 0.7), ("repair", 0.72), ("repair_all", 0.8))]
    records += [_record("aligned", t, a, width=2) for t, a in curve.items()] + [_record("reset_bn", 0.5, 0.7, width=2)]
    found = book.results.curve_barriers(records, tuple(book.results.FIG8_METHODS))
    assert list(found) == [("resnet20", "bn", 1, None)]
    assert found["resnet20", "bn", 1, None][0]["repair_all"] == pytest.approx(5.0)
    book.save_results("5.2", "cpu", {}, {}, directory=tmp_path, measurements=records)
    block = book.results.fig8_right_block(tmp_path)
    assert "Paper Fig. 8 right" in block and "1 seed pairs in 1 setting" in block
    assert book.results.caption_panels(block) == [(8, "right")] and (tmp_path / "fig8_right_cpu.png").exists()


def test_refresh_prose_copies_text_and_captions_and_keeps_outputs(tmp_path):
    import nbformat

    from repairlib.book import runner

    new = nbformat.v4
    source = new.new_notebook(cells=[new.new_markdown_cell("# Old title"),
                                     new.new_code_cell("x = 1", metadata={"tags": ["parameters"]}),
                                     new.new_code_cell("x", metadata={"mystnb": {"figure": {"caption": "old"}}})])
    ran = nbformat.from_dict(json.loads(nbformat.writes(source)))
    ran.cells.insert(2, new.new_code_cell('x = 2', metadata={"tags": ["injected-parameters"]}))
    ran.cells[3].outputs = [new.new_output("execute_result", {"text/plain": "2"}, execution_count=1)]
    ran.cells[3].metadata["papermill"] = {"duration": 0.5}
    ran.cells[0].metadata["tags"] = []  # as papermill writes every cell
    executed, src = tmp_path / "nb_run.ipynb", tmp_path / "nb.ipynb"
    nbformat.write(ran, str(executed))
    source.cells[0].source = "# New title, measured numbers"
    source.cells[2].metadata["mystnb"]["figure"]["caption"] = "new caption"
    nbformat.write(source, str(src))
    assert runner.refresh_prose(executed, src) is True
    nb = nbformat.read(str(executed), as_version=4)
    assert nb.cells[0].source == "# New title, measured numbers" and nb.cells[0].metadata["tags"] == []
    assert nb.cells[3].metadata["mystnb"]["figure"]["caption"] == "new caption"
    assert nb.cells[3].metadata["papermill"] == {"duration": 0.5} and nb.cells[3].outputs[0]["data"]["text/plain"] == "2"
    assert nb.cells[2].source == "x = 2"  # papermill's injected values stay
    assert runner.refresh_prose(executed, src) is False  # nothing left to copy
    source.cells[2].source = "x + 1"
    nbformat.write(source, str(src))
    before = executed.read_bytes()
    with pytest.raises(ValueError, match="did not run the code of .*rerun it"):
        runner.refresh_prose(executed, src)
    assert executed.read_bytes() == before

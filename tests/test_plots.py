"""The book's figures are readable where the book shows them: every text of every figure that
repairlib.plots makes is at least 9 pt once the browser has fitted the PNG into the ~740 px text column
(plots.rendered_font_sizes), and the filter plots of section 5.2 show aligned pairs side by side."""

import numpy as np
import pytest
import torch

from repairlib import plots

ALPHAS = [i / 10 for i in range(11)]
LONG = "aligned + REPAIR (closed form, all layers)"  # as long as the notebooks' series labels


def _figures():
    """Each kind of figure the notebooks make, at the sizes and label lengths they use."""
    rng = np.random.default_rng(0)
    three = {"naive": rng.random(11), "aligned": rng.random(11), LONG: rng.random(11)}
    goal = torch.rand(64)
    yield "curve", plots.curve(ALPHAS, three, "test accuracy (%)", "10-layer MLPs, Fashion-MNIST")
    yield "barrier_vs log2", plots.barrier_vs([1, 2, 4, 8, 16], {"BatchNorm": [5, 4, 3, 2, 1], "LayerNorm": [1] * 5,
                                                               "Fixup": [2] * 5},
                                              "width multiplier", "barrier (% test accuracy)", log2=True,
                                              title="ResNet20 on CIFAR-10, midpoint barrier")
    yield "barrier_vs depth", plots.barrier_vs([11, 13, 16, 19], {"before": [50, 60, 70, 80], "after": [5] * 4},
                                               "VGG depth", "barrier (%)", title="VGG x1, CIFAR-10")
    yield "layer_ratios", plots.layer_ratios({"naive": rng.random(10), "aligned": rng.random(10), LONG: np.ones(10)},
                                             title="MLP, alpha = 0.5", logy=True)
    yield "channel_stats", plots.channel_stats(goal, {"before REPAIR": goal / 2, "after REPAIR": goal},
                                               title="conv layer 7 of 19 at alpha = 0.5")
    yield "filters, 3 panels", plots.filters({"A": torch.randn(64, 1, 7, 7), "B aligned to A": torch.randn(64, 1, 7, 7),
                                              "B as trained": torch.randn(64, 1, 7, 7)}, title="ResNet18 stem filters")
    if hasattr(plots, "sweep_panels"):  # the page on merging N networks
        four = {"merged": [80, 70, 60], "merged + REPAIR": [85, 84, 83], "ensemble": [88, 89, 90], "best single": [87] * 3}
        yield "sweep_panels", plots.sweep_panels([2, 4, 8], {"MLP: accuracy": ("test accuracy (%)", four),
                                                             "MLP: loss": ("test loss", four)},
                                                 "networks merged (N)", log2=True)
    if hasattr(plots, "grouped_bars"):
        bars = {"REPAIR": 60, "rescale": 70, "BN reset": 66, "none": 10}
        yield "grouped_bars", plots.grouped_bars({f"{net}\n{align}": bars for net in ("VGG16", "ResNet20")
                                                  for align in ("activation", "weight")}, "test accuracy (%)")
    a = torch.randn(64, 1, 7, 7)
    yield "filter_pairs, grey", plots.filter_pairs(a, a + torch.randn(64, 1, 7, 7), unaligned=torch.randn(64, 1, 7, 7),
                                                   title="ResNet18 on Fashion-MNIST: first-layer filters")
    yield "filter_pairs, RGB", plots.filter_pairs(torch.randn(16, 3, 3, 3), torch.randn(16, 3, 3, 3), ncols=4,
                                                  title="ResNet20 on CIFAR-10: first-layer filters")


@pytest.mark.parametrize("name,fig", list(_figures()), ids=[name for name, _ in _figures()])
def test_every_text_is_at_least_9_pt_in_the_text_column(name, fig):
    sizes = plots.rendered_font_sizes(fig)
    assert sizes, f"{name}: no text found"
    small = [(text, round(pt, 1)) for text, pt in sizes if pt < plots.MIN_FONT_PT - 1e-6]
    assert not small, f"{name}: below {plots.MIN_FONT_PT} pt in the {plots.COLUMN_PX} px column: {small[:5]}"


def test_rendered_size_shrinks_with_a_figure_wider_than_the_column():
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13.45, 2))  # about 1480 px at 110 dpi: the column shows it at half size
    ax = fig.add_axes((0, 0, 1, 1), xticks=[], yticks=[])  # the tight bounding box is the figure
    ax.text(0.5, 0.5, "x", fontsize=20)
    [(_, pt)] = plots.rendered_font_sizes(fig)
    assert 9.5 < pt < 10.5


def test_filter_pairs_puts_filter_i_of_a_beside_filter_i_of_b():
    a = torch.randn(6, 1, 3, 3)
    b = torch.randn(6, 1, 3, 3)
    b[2] = 5 * a[2]  # the best pair: correlation 1, shown first once sorted
    fig = plots.filter_pairs(a, b, ncols=3)
    image = fig.axes[0].get_images()[0].get_array()
    first_a, first_b = np.asarray(image[0:3, 0:3]), np.asarray(image[0:3, 4:7])
    expected = (a[2, 0] / a[2, 0].abs().max()).numpy()  # each filter scaled by its own largest magnitude
    assert np.allclose(first_a, expected, atol=1e-6) and np.allclose(first_b, expected, atol=1e-6)
    labels = [t.get_text() for t in fig.axes[0].texts]
    assert labels[0] == "1.00" and len(labels) == 6
    assert "mean correlation" in fig.axes[0].get_title()
    fig = plots.filter_pairs(a, b, unaligned=b.flip(0), order="index", max_pairs=4)
    assert len(fig.axes[0].texts) == 4 and "trained order" in fig.axes[0].get_title()
    with pytest.raises(ValueError, match="same shape"):
        plots.filter_pairs(a, b[:3])
    with pytest.raises(ValueError, match="order"):
        plots.filter_pairs(a, b, order="random")


def test_dataset_labels_for_titles():
    assert plots.dataset_label("fashion_mnist") == "Fashion-MNIST" and plots.dataset_label("cifar10") == "CIFAR-10"
    assert plots.dataset_label("my_data") == "my_data"

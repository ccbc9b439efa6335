"""The plots of the page on merging N networks: side-by-side panels over N and grouped bars."""

import pytest
from matplotlib.figure import Figure

from repairlib import plots


def test_sweep_panels_share_x_values_and_one_legend():
    fig = plots.sweep_panels([2, 4, 8], {"MLP": ("accuracy (%)", {"merged": [80, 70, 60], "ensemble": [88, 89, 90]}),
                                         "ResNet20": ("accuracy (%)", {"merged": [60, 50, 40], "ensemble": [75, 76, 77]})},
                             "networks merged", log2=True)
    assert isinstance(fig, Figure) and [ax.get_title() for ax in fig.axes] == ["MLP", "ResNet20"]
    assert fig.axes[0].get_xscale() == "log" and [t.get_text() for t in fig.axes[1].get_xticklabels()] == [
        "2", "4", "8"]
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["merged", "ensemble"]
    with pytest.raises(ValueError, match="has 2 values for 3"):
        plots.sweep_panels([2, 4, 8], {"MLP": ("loss", {"merged": [1, 2]})}, "N")
    with pytest.raises(ValueError, match="no panels"):
        plots.sweep_panels([2], {}, "N")


def test_grouped_bars_leave_out_missing_bars():
    fig = plots.grouped_bars({"VGG16, weight": {"REPAIR": 60, "rescale": 70, "BN reset": None},
                              "ResNet20, weight": {"REPAIR": 65, "rescale": 64, "BN reset": 66}}, "accuracy (%)")
    ax = fig.axes[0]
    assert len(ax.patches) == 5 and [t.get_text() for t in ax.get_xticklabels()] == [
        "VGG16, weight", "ResNet20, weight"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["REPAIR", "rescale", "BN reset"]
    with pytest.raises(ValueError, match="no groups"):
        plots.grouped_bars({}, "accuracy")

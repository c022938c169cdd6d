"""Matplotlib pictures of attention: figures build, save, carry the right data and labels, and
refuse bad arguments by name."""

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from attnlab.inspect.plots import plot_grid, plot_head, plot_head_stats


def softmax(*shape):
    return torch.softmax(torch.randn(*shape), dim=-1)


def tick_texts(ticks):
    return [t.get_text() for t in ticks]


def test_plot_head_draws_the_weights_with_token_labels(tmp_path):
    weights = softmax(4, 6)
    ax = plot_head(weights, list("abcd"), list("uvwxyz"), title="layer 0, head 3")
    assert np.allclose(ax.images[0].get_array(), weights.numpy())
    assert tick_texts(ax.get_yticklabels()) == list("abcd")
    assert tick_texts(ax.get_xticklabels()) == list("uvwxyz")
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("key", "query", "layer 0, head 3")
    ax.figure.savefig(tmp_path / "head.png")
    assert (tmp_path / "head.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_head_draws_into_a_given_axes_and_labels_long_inputs_sparsely(tmp_path):
    fig = Figure()
    ax = fig.add_subplot()
    tokens = [f"t{i}" for i in range(300)]
    assert plot_head(softmax(300, 300).numpy(), tokens, tokens, ax=ax) is ax
    fig.savefig(tmp_path / "long.png")  # draws the tick labels
    shown = [t for t in tick_texts(ax.get_xticklabels()) if t]
    assert 2 <= len(shown) <= 14
    assert set(shown) <= set(tokens)


def test_plot_head_leaves_pyplot_alone():
    backend = matplotlib.get_backend()
    ax = plot_head(softmax(3, 3))
    assert ax.figure.canvas.get_default_filetype() == "png"
    assert type(ax.figure.canvas).__name__ == "FigureCanvasAgg"
    assert matplotlib.get_backend() == backend


def test_plot_grid_lays_out_layers_by_heads(tmp_path):
    weights = softmax(2, 3, 5, 5)
    fig = plot_grid(weights, layers=[4, 7], heads=[0, 2, 5])
    axes = [ax for ax in fig.axes if ax.images]
    assert len(axes) == 6
    assert np.allclose(axes[5].images[0].get_array(), weights[1, 2].numpy())  # row-major
    assert [ax.get_title() for ax in axes[:3]] == ["head 0", "head 2", "head 5"]
    assert [axes[0].get_ylabel(), axes[3].get_ylabel()] == ["layer 4", "layer 7"]
    fig.savefig(tmp_path / "grid.png")
    assert (tmp_path / "grid.png").stat().st_size > 0


def test_plot_grid_max_pools_long_heads_keeping_peaks():
    weights = torch.zeros(1, 1, 1024, 1024)
    weights[0, 0, 700, 3] = 1.0
    image = plot_grid(weights).axes[0].images[0].get_array()
    assert image.shape == (256, 256)
    assert image[700 // 4, 0] == 1.0
    assert image.sum() == 1.0


def stats_rows():
    return [
        {"view": "self", "layer": l, "head": h, "entropy": l + 0.1 * h, "sink": 0.5}
        for l in range(3)
        for h in range(4)
        if (l, h) != (2, 3)
    ]


def test_plot_head_stats_maps_layers_and_heads(tmp_path):
    ax = plot_head_stats(stats_rows(), "entropy")
    grid = ax.images[0].get_array()
    assert grid.shape == (3, 4)
    assert grid[1, 2] == pytest.approx(1.2)
    assert grid.mask[2, 3]  # no row: shown grey
    assert tick_texts(ax.get_xticklabels()) == ["0", "1", "2", "3"]
    assert tick_texts(ax.get_yticklabels()) == ["0", "1", "2"]
    assert ax.get_title() == "entropy"
    assert len(ax.texts) == 11  # each value written in its cell
    ax.figure.savefig(tmp_path / "stats.png")
    assert (tmp_path / "stats.png").stat().st_size > 0


def test_plot_head_stats_picks_a_view():
    rows = [*stats_rows(), {"view": "cross", "layer": 0, "head": 0, "entropy": 9.0}]
    with pytest.raises(ValueError, match=r"view: the stats hold several views \['cross', 'self'\]"):
        plot_head_stats(rows, "entropy")
    ax = plot_head_stats(rows, "entropy", view="cross")
    assert ax.images[0].get_array().tolist() == [[9.0]]
    assert ax.get_title() == "entropy (cross)"


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: plot_head(softmax(2, 3, 3)), ValueError, r"weights: expected 2 dimensions"),
        (lambda: plot_head([[0.5]]), TypeError, r"weights: expected a torch.Tensor or numpy"),
        (
            lambda: plot_head(torch.full((2, 2), float("nan"))),
            ValueError,
            r"weights: expected finite",
        ),
        (
            lambda: plot_head(softmax(2, 3), ["a"]),
            ValueError,
            r"query_tokens: expected 2 labels \(Tq of weights\), got 1",
        ),
        (
            lambda: plot_head(softmax(2, 3), None, "abc"),
            TypeError,
            r"key_tokens: expected a list of strings",
        ),
        (lambda: plot_grid(softmax(2, 3)), ValueError, r"weights: expected 4 dimensions"),
        (
            lambda: plot_grid(softmax(2, 3, 4, 4), heads=[0, 1]),
            ValueError,
            r"heads: expected 3 numbers \(H of weights\), got 2",
        ),
        (
            lambda: plot_grid(softmax(2, 3, 4, 4), layers=[0, "1"]),
            TypeError,
            r"layers\[1\]: expected an integer",
        ),
        (
            lambda: plot_head_stats(stats_rows(), "entropi"),
            ValueError,
            r"metric: 'entropi' is not in the stats; available: \['entropy', 'sink'\]",
        ),
        (
            lambda: plot_head_stats(stats_rows(), "entropy", view="x"),
            ValueError,
            r"view: expected one of \['self'\], got 'x'",
        ),
        (lambda: plot_head_stats([{"layer": 0}], "e"), ValueError, r"stats\[0\]: missing 'head'"),
        (
            lambda: plot_head_stats([{"layer": 0, "head": 0, "e": "x"}], "e"),
            TypeError,
            r"stats\[0\]\['e'\]: expected a number, got str",
        ),
        (
            lambda: plot_head_stats(stats_rows() + stats_rows()[:1], "sink"),
            ValueError,
            r"stats\[11\]: a second row for layer 0, head 0",
        ),
    ],
)
def test_bad_arguments_are_refused_by_name(call, error, message):
    with pytest.raises(error, match=message):
        call()

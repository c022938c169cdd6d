"""The explorer page: what write_page writes (no browser), then the page itself in Chromium.

The browser tests drive the system Chromium through Playwright and are skipped, with the reason,
when either is missing. Screenshots go to $ATTNLAB_SCREENSHOTS when set (else a temporary dir).
"""

from __future__ import annotations

import base64
import functools
import gzip
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from attnlab.files import WriteError
from attnlab.inspect.page import (
    AttentionView,
    PageData,
    page_html,
    quantize,
    template,
    write_page,
)

LIMIT_BYTES = 5_000_000


# -- synthetic attention ---------------------------------------------------------------------------


def random_softmax(layers: int, heads: int, tokens: int, seed: int = 0) -> torch.Tensor:
    """Dense rows of a softmax over Gaussian scores: the worst case for compression."""
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(layers, heads, tokens, tokens, generator=g), dim=-1)


def peaked(layers: int, heads: int, tokens: int, seed: int = 0) -> torch.Tensor:
    """Causal rows shaped like a trained model's heads: a first-token sink, previous-token,
    self, and sharp content heads."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(layers, heads, tokens, tokens, generator=g) * 2
    kind = (torch.arange(layers * heads) % 4).reshape(layers, heads, 1, 1)
    index = torch.arange(tokens)
    previous = (index[:, None] - 1 == index[None, :]).float()
    same = torch.eye(tokens)
    first = torch.zeros(tokens, tokens)
    first[:, 0] = 1
    scores = scores + 9 * (kind == 0) * first + 9 * (kind == 1) * previous + 9 * (kind == 2) * same
    scores = scores * torch.where(kind == 3, 3.0, 1.0)
    causal = torch.ones(tokens, tokens, dtype=torch.bool).tril()
    return torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)


def causal_pattern(tokens: int) -> torch.Tensor:
    """(1, 1, T, T): each query puts 0.5 on itself, 0.3 on token 0 and 0.2 on the previous one."""
    w = torch.zeros(tokens, tokens)
    i = torch.arange(1, tokens)
    w[i, i] = 0.5
    w[1:, 0] += 0.3
    w[i, i - 1] += 0.2
    w[0, 0] = 1.0
    return w[None, None]


@functools.cache
def browsed_weights() -> torch.Tensor:
    """(6, 12, 128, 128): peaked heads, except diffuse dense ones in layer 5 (shared: read only)."""
    weights = peaked(6, 12, 128)
    weights[5] = random_softmax(1, 12, 128)[0]
    return weights


def words(n: int, prefix: str = "w") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def decoder_page(layers=6, heads=12, tokens=128, weights=None) -> PageData:
    weights = peaked(layers, heads, tokens) if weights is None else weights
    g = torch.Generator().manual_seed(1)
    metrics = torch.rand(layers, heads, 2, generator=g)
    stats = [
        {
            "view": "self",
            "layer": l,
            "head": h,
            "entropy": float(metrics[l, h, 0]),
            "sink": float(metrics[l, h, 1]),
        }
        for l in range(layers)
        for h in range(heads)
    ]
    view = AttentionView(
        "self", words(tokens), words(tokens), list(range(layers)), list(range(heads)), weights
    )
    return PageData("decoder", [view], stats=stats, meta={"model": "synthetic", "text": "w0 w1"})


def small_view(**changes) -> AttentionView:
    fields = dict(
        name="self",
        query_tokens=words(5),
        key_tokens=words(5),
        layers=[0, 1],
        heads=[0, 1, 2, 3],
        weights=random_softmax(2, 4, 5),
    )
    fields.update(changes)
    return AttentionView(**fields)


def embedded(text: str) -> tuple[dict, dict[str, bytes]]:
    """The page's JSON payload and its inflated byte blocks, read back in Python."""
    meta = re.search(
        r'<script type="application/json" id="attnlab-meta">(.*?)</script>', text, re.S
    )
    blocks = re.findall(
        r'<script type="application/octet-stream" id="attnlab-blob-([\w-]+)"[^>]*>(.*?)</script>',
        text,
        re.S,
    )
    return json.loads(meta[1]), {
        name: gzip.decompress(base64.b64decode(body)) for name, body in blocks
    }


# -- write_page, no browser ------------------------------------------------------------------------


def test_page_round_trips_weights_tokens_and_stats(tmp_path):
    weights = random_softmax(2, 4, 5)
    tricky = ["</script><script>alert(1)</script>", "<!--", "a & b", "é\u2028", "", "x", "y"]
    view = small_view(query_tokens=tricky[:5], key_tokens=tricky[2:], weights=weights)
    stats = [
        {"view": "self", "layer": 1, "head": 2, "entropy": 0.5, "kind": "sink", "x": np.nan},
        {"view": "self", "layer": 0, "head": 0, "entropy": torch.tensor(0.25), "x": np.float32(2)},
    ]
    data = PageData("t</title>{{BLOBS}}", [view], stats=stats, meta={"model": "m", "params": 3})
    path = write_page(tmp_path / "page.html", data)
    assert path == tmp_path / "page.html"
    text = path.read_text("utf-8")
    meta, blocks = embedded(text)

    assert meta["views"][0]["query_tokens"] == tricky[:5]
    assert meta["views"][0]["key_tokens"] == tricky[2:]
    assert meta["views"][0]["shape"] == [2, 4, 5, 5]
    assert meta["stats"] == [
        {"view": "self", "layer": 1, "head": 2, "entropy": 0.5, "kind": "sink", "x": None},
        {"view": "self", "layer": 0, "head": 0, "entropy": 0.25, "x": 2.0},
    ]
    assert meta["stat_keys"] == ["entropy", "kind", "x"]
    assert meta["meta"] == {"model": "m", "params": "3"}
    decoded = np.frombuffer(blocks["view-0"], dtype=np.uint8).reshape(2, 4, 5, 5)
    assert np.abs(decoded / 255 - weights.numpy()).max() <= 0.5 / 255 + 1e-6
    # Tokens cannot end a script element early: only the page's own three close tags remain.
    assert text.count("</script>") == 3
    assert "<title>t&lt;/title&gt;{{BLOBS}}</title>" in text  # data is not a placeholder
    assert list(blocks) == ["view-0"]


def test_image_round_trips(tmp_path):
    image = torch.rand(3, 8, 6)
    view = small_view(query_tokens=words(7), key_tokens=words(7), weights=random_softmax(2, 4, 7))
    data = PageData("vit", [view], image=image, patch_grid=(2, 3))
    meta, blocks = embedded(write_page(tmp_path / "vit.html", data).read_text("utf-8"))
    assert meta["image"]["shape"] == [3, 8, 6]
    assert meta["patch_grid"] == [2, 3]
    pixels = np.frombuffer(blocks["image"], dtype=np.uint8).reshape(3, 8, 6)
    assert np.abs(pixels / 255 - image.numpy()).max() <= 0.5 / 255 + 1e-6


def test_template_refers_to_nothing_outside_the_page():
    # The browser tests see every http(s), file and blob request; data: URLs and code paths
    # they do not reach are ruled out here, on the template itself.
    text = template()
    forbidden = [
        r"https?:",
        r"\bdata:",
        r"url\(",
        r"\bfetch\(",
        r"XMLHttpRequest",
        r"WebSocket",
        r"EventSource",
        r"sendBeacon",
        r"createObjectURL",
        r"\bimport\(",
        r"<link\b",
        r"<iframe\b",
        r"<img\b",
        r"\bsrc=",
        r"\bhref=",
        r"@import",
        r"@font-face",
    ]
    assert [p for p in forbidden if re.search(p, text)] == []
    assert "DecompressionStream" in text


def test_same_data_gives_the_same_page():
    data = PageData("t", [small_view()])
    assert page_html(data) == page_html(data)


def test_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "page.html"
    path.write_text("old")
    write_page(path, PageData("t", [small_view()]))
    assert [p.name for p in tmp_path.iterdir()] == ["page.html"]
    assert "attnlab-meta" in path.read_text("utf-8")


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "page.html"
    path.write_text("old")

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(WriteError, match=r"page: cannot write .*page\.html \(No space left"):
        write_page(path, PageData("t", [small_view()]))
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["page.html"]


BAD_VIEWS = [
    (
        dict(weights=random_softmax(2, 4, 5)[..., :4]),
        ValueError,
        r"views\[0\]\.weights: expected \(L, H, Tq, Tk\) = \(2, 4, 5, 5\) matching "
        r"layers/heads/tokens, got \(2, 4, 5, 4\)",
    ),
    (dict(layers=[0]), ValueError, r"views\[0\]\.weights: expected .* = \(1, 4, 5, 5\)"),
    (dict(weights=random_softmax(2, 4, 5)[0]), ValueError, r"weights: expected 4 dimensions"),
    (dict(weights=[[0.5]]), TypeError, r"weights: expected a torch.Tensor, got list"),
    (
        dict(weights=torch.ones(2, 4, 5, 5, dtype=torch.long)),
        TypeError,
        r"weights: expected a floating",
    ),
    (dict(weights=torch.full((2, 4, 5, 5), float("nan"))), ValueError, r"weights: expected finite"),
    (
        dict(weights=torch.full((2, 4, 5, 5), 1.5)),
        ValueError,
        r"weights: expected values in \[0, 1\]",
    ),
    (
        dict(weights=torch.full((2, 4, 5, 5), 0.5)),
        ValueError,
        r"weights: each row .* at most 1, got 2.5",
    ),
    (
        dict(query_tokens=["a", 1, "c", "d", "e"]),
        TypeError,
        r"query_tokens\[1\]: expected a string, got int",
    ),
    (dict(key_tokens=[]), ValueError, r"key_tokens: expected a non-empty list"),
    (dict(heads=[0, 1, 1, 2]), ValueError, r"heads: expected distinct numbers"),
    (dict(layers=[0, "1"]), TypeError, r"layers\[1\]: expected an integer"),
    (dict(name=""), ValueError, r"views\[0\]\.name: expected a non-empty string"),
]


@pytest.mark.parametrize(("changes", "error", "message"), BAD_VIEWS)
def test_bad_views_are_refused_naming_the_field(changes, error, message):
    with pytest.raises(error, match=message):
        page_html(PageData("t", [small_view(**changes)]))


def test_bad_pages_are_refused_naming_the_field(tmp_path):
    view = small_view()
    cls = small_view(query_tokens=words(5), key_tokens=words(5))  # [CLS] + 2 x 2 patches
    cases = [
        (PageData("t", []), ValueError, r"views: expected a non-empty list"),
        (PageData("t", [view, small_view()]), ValueError, r"views\[1\]\.name: 'self' is already"),
        (
            PageData("t", [view], stats=[{"view": "self", "layer": 0}]),
            ValueError,
            r"stats\[0\]: missing 'head'",
        ),
        (
            PageData("t", [view], stats=[{"view": "x", "layer": 0, "head": 0}]),
            ValueError,
            r"stats\[0\]\['view'\]: expected one of the view names \['self'\], got 'x'",
        ),
        (
            PageData("t", [view], stats=[{"view": "self", "layer": 0, "head": 0, "e": [1]}]),
            TypeError,
            r"stats\[0\]\['e'\]: expected a number or a string, got list",
        ),
        (
            PageData("t", [view], meta={"model": object()}),
            TypeError,
            r"meta\['model'\]: expected a string",
        ),
        (
            PageData("t", [cls], image=torch.rand(3, 4, 4)),
            ValueError,
            r"patch_grid: expected together with image",
        ),
        (
            PageData("t", [cls], patch_grid=(2, 2)),
            ValueError,
            r"image: expected together with patch_grid",
        ),
        (
            PageData("t", [cls], image=torch.rand(2, 4, 4), patch_grid=(2, 2)),
            ValueError,
            r"image: expected \(C, H, W\) with C = 1 or 3",
        ),
        (
            PageData("t", [cls], image=torch.rand(3, 4, 4), patch_grid=(3, 2)),
            ValueError,
            r"patch_grid: \(3, 2\) needs a view with 1 \+ 3\*2 = 7 key tokens",
        ),
        (
            PageData("t", [cls], image=torch.rand(3, 4, 4), patch_grid=(2, 0)),
            ValueError,
            r"patch_grid: expected \(rows, cols\) of positive integers",
        ),
    ]
    for data, error, message in cases:
        with pytest.raises(error, match=message):
            write_page(tmp_path / "page.html", data)
    assert not (tmp_path / "page.html").exists()


@pytest.mark.parametrize("make", [random_softmax, peaked])
def test_six_layers_twelve_heads_128_tokens_fit_in_5_mb(tmp_path, make):
    data = decoder_page(weights=make(6, 12, 128))
    size = write_page(tmp_path / "page.html", data).stat().st_size
    assert size < LIMIT_BYTES


# -- the page in Chromium --------------------------------------------------------------------------

LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def chromium_path() -> str | None:
    found = shutil.which("chromium")
    if found:
        return found
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the explorer's browser tests need the playwright package"
    )
    executable = chromium_path()
    if executable is None:
        pytest.skip(
            "the explorer's browser tests need Chromium (not on PATH, no /usr/bin/chromium)"
        )
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=executable, headless=True, args=LAUNCH_ARGS
        )
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pages")
    return {
        "decoder": write_page(root / "decoder.html", decoder_page(weights=browsed_weights())),
        "long": write_page(
            root / "long.html",
            PageData(
                "4096 tokens",
                [AttentionView("self", words(4096), words(4096), [0], [0], causal_pattern(4096))],
            ),
        ),
        "vit": write_page(root / "vit.html", vit_page()),
        "seq2seq": write_page(root / "seq2seq.html", seq2seq_page()),
    }


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = os.environ.get("ATTNLAB_SCREENSHOTS")
    path = Path(folder) if folder else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


class Tab:
    """One page in a fresh browser context, with its console errors and network requests."""

    def __init__(self, browser, path: Path, shots: Path):
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.context.set_default_timeout(15_000)  # a failing wait fails fast
        self.page = self.context.new_page()
        self.url = path.as_uri()
        self.shots = shots
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.goto(self.url)
        self.page.wait_for_function(
            "() => { const s = window.attnlabState; return s && (s.ready || !!s.error); }"
        )
        assert self.state("error") is None

    def state(self, key: str):
        return self.page.evaluate(f"window.attnlabState.{key}")

    def wait_change(self, key: str, before) -> object:
        """Wait until ``attnlabState.<key>`` differs from ``before``; return the new value."""
        self.page.wait_for_function(
            f"(before) => JSON.stringify(window.attnlabState.{key}) !== JSON.stringify(before)",
            arg=before,
        )
        return self.state(key)

    def pixels(self, selector: str, points: list[tuple[float, float]]) -> list[list[int]]:
        """RGB of a canvas at CSS-pixel points."""
        return self.page.evaluate(
            """([selector, points]) => {
                const canvas = document.querySelector(selector);
                const dpr = canvas.width / canvas.clientWidth;
                const ctx = canvas.getContext("2d");
                return points.map(([x, y]) =>
                    Array.from(ctx.getImageData(Math.floor(x * dpr), Math.floor(y * dpr), 1, 1)
                        .data.slice(0, 3)));
            }""",
            [selector, points],
        )

    def shot(self, name: str) -> None:
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=False)
        assert path.stat().st_size > 0

    def assert_clean(self) -> None:
        assert self.errors == []
        assert [url for url in self.requests if url != self.url] == []
        assert self.requests == [self.url]  # the page itself, nothing else

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def open_tab(browser, shots):
    opened = []

    def open_(path: Path) -> Tab:
        tab = Tab(browser, path, shots)
        opened.append(tab)
        return tab

    yield open_
    for tab in opened:
        tab.close()


def vit_page() -> PageData:
    """A grey 32 x 32 image in 4 x 4 patches; at layer 0, head 0 [CLS] looks at patch (1, 2)."""
    tokens = ["[CLS]"] + [f"p{r},{c}" for r in range(4) for c in range(4)]
    weights = torch.full((2, 3, 17, 17), 1 / 17)
    weights[0, 0, 0] = 0
    weights[0, 0, 0, 0] = 0.1
    weights[0, 0, 0, 1 + 1 * 4 + 2] = 0.9
    view = AttentionView("self", tokens, tokens, [0, 1], [0, 1, 2], weights)
    return PageData("vit", [view], image=torch.full((3, 32, 32), 0.5), patch_grid=(4, 4))


SCRIPT_TOKEN = "</script><b>&amp;"  # must show as text, not end the data or become markup


def seq2seq_page() -> PageData:
    source, target = [*words(6, "src"), SCRIPT_TOKEN], words(5, "tgt")
    views = [
        AttentionView("encoder", source, source, [0, 1], [0, 1, 2, 3], random_softmax(2, 4, 7)),
        AttentionView("decoder", target, target, [0, 1], [0, 1, 2, 3], peaked(2, 4, 5)),
        AttentionView(
            "cross",
            target,
            source,
            [0, 1],
            [0, 1, 2, 3],
            torch.softmax(torch.randn(2, 4, 5, 7), -1),
        ),
    ]
    stats = [
        {"view": v.name, "layer": l, "head": h, "entropy": 0.1 * h}
        for v in views
        for l in v.layers
        for h in v.heads
    ]
    return PageData("translation", views, stats=stats, meta={"model": "seq2seq"})


def test_head_view_follows_layer_heads_and_hover(open_tab, pages):
    tab = open_tab(pages["decoder"])
    page = tab.page
    assert tab.state("tab") == "head"
    assert page.locator(".token.query").count() == 128
    assert page.locator(".token.key").count() == 128
    quantized = quantize(browsed_weights())
    first = tab.state("drawn.head")
    # every weight of at least 2/255 is a line: 0.008 and more, visible at all
    lines = int((quantized[0] >= 2).sum())
    assert lines < 12_000
    assert first.startswith(f"self|layer 0|heads 0,1,2,3,4,5,6,7,8,9,10,11|focus -|{lines} lines|")
    assert not page.is_visible("#head-limit")

    page.select_option("#layer-select", "3")
    layer3 = tab.wait_change("drawn.head", first)
    assert tab.state("layer") == 3
    lines = int((quantized[3] >= 2).sum())
    assert layer3.startswith(f"self|layer 3|heads 0,1,2,3,4,5,6,7,8,9,10,11|focus -|{lines} lines|")

    page.click('.head-swatch[data-head="2"]')
    without2 = tab.wait_change("drawn.head", layer3)
    assert 2 not in tab.state("visibleHeads")
    assert page.get_attribute('.head-swatch[data-head="2"]', "aria-pressed") == "false"
    page.click('.head-swatch[data-head="2"]')
    assert tab.wait_change("drawn.head", without2) == layer3  # the same drawing again

    page.hover('.token.query[data-index="40"]')
    focused = tab.wait_change("drawn.head", layer3)
    assert tab.state("focus") == {"side": "query", "index": 40}
    assert "focus query 40|" in focused
    assert "focused" in page.get_attribute('.token.query[data-index="40"]', "class")
    lines = int(re.search(r"\|(\d+) lines\|", focused)[1])
    assert 0 < lines <= 12 * 41  # one row: at most one line per head and visible key
    tab.shot("head-view-focus")

    page.hover('.token.key[data-index="7"]')
    key_focused = tab.wait_change("drawn.head", focused)
    assert tab.state("focus") == {"side": "key", "index": 7}
    page.hover("#page-title")
    assert tab.wait_change("drawn.head", key_focused) == layer3
    assert tab.state("focus") is None
    assert page.locator(".token.focused").count() == 0

    # Diffuse heads (layer 5) have more than 12,000 lines: only the strongest are drawn, and
    # the page says so.
    page.select_option("#layer-select", "5")
    layer5 = tab.wait_change("drawn.head", layer3)
    threshold = next(t for t in range(2, 256) if (quantized[5] >= t).sum() <= 12_000)
    assert threshold > 2
    assert f"|focus -|{int((quantized[5] >= threshold).sum())} lines|" in layer5
    assert "strongest" in page.inner_text("#head-limit")
    tab.assert_clean()


def test_model_view_thumbnails_open_the_matrix(open_tab, pages):
    tab = open_tab(pages["decoder"])
    page = tab.page
    page.click("#tab-model")
    page.wait_for_function("() => window.attnlabState.modelComplete")
    assert page.locator("#model-grid .thumb").count() == 72
    assert tab.state("drawn.model").startswith("self|72 thumbnails|")
    # thumbnail (layer 0, head 0) holds dark cells on or below the diagonal only
    inked = page.evaluate(
        """() => {
            const c = document.querySelector('.thumb[data-layer="0"][data-head="0"]');
            const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
            let below = 0, above = 0;
            for (let y = 0; y < c.height; y++) for (let x = 0; x < c.width; x++) {
                const p = (y * c.width + x) * 4;
                if (d[p] < 200) { if (x <= y + 1) below++; else above++; }
            }
            return [below, above];
        }"""
    )
    assert inked[0] > 20
    assert inked[1] == 0  # causal
    tab.shot("model-view")

    page.click('.thumb[data-layer="4"][data-head="7"]')
    page.wait_for_function("() => window.attnlabState.drawn.matrix !== ''")
    assert tab.state("tab") == "matrix"
    assert (tab.state("layer"), tab.state("head")) == (4, 7)
    drawn = tab.state("drawn.matrix")
    assert drawn.startswith("self|layer 4|head 7|")

    page.select_option("#head-select", "8")
    assert tab.wait_change("drawn.matrix", drawn).startswith("self|layer 4|head 8|")

    # hovering a cell names its tokens and weight (head 8 of layer 4 is a first-token sink)
    scale = tab.state("matrix.scale") / page.evaluate("window.devicePixelRatio")
    page.hover("#matrix-canvas", position={"x": 0.5 * scale, "y": 10.5 * scale})
    page.wait_for_function("() => window.attnlabState.hover !== null")
    assert (tab.state("hover")["query"], tab.state("hover")["key"]) == (10, 0)
    quantized = round(float(browsed_weights()[4, 8, 10, 0]) * 255) / 255
    assert quantized > 0.5
    info = page.inner_text("#matrix-info")
    assert f'query 10 "w10" \u2192 key 0 "w0": {quantized:.3f}' in info
    tab.shot("matrix-view")
    tab.assert_clean()


def test_stats_table_sorts_and_opens_a_head(open_tab, pages):
    tab = open_tab(pages["decoder"])
    page = tab.page
    page.click("#tab-stats")
    assert page.locator("#stats-table tbody tr").count() == 72
    entropy = [row["entropy"] for row in decoder_page(tokens=4).stats]

    def column(index):
        return [
            float(t)
            for t in page.locator(f"#stats-table tbody td:nth-child({index})").all_inner_texts()
        ]

    page.click('th[data-key="entropy"] button')
    assert column(3) == sorted(round(e, 3) for e in entropy)
    page.click('th[data-key="entropy"] button')
    assert column(3) == sorted((round(e, 3) for e in entropy), reverse=True)
    assert page.get_attribute('th[data-key="entropy"]', "aria-sort") == "descending"
    tab.shot("stats")

    first = page.locator("#stats-table tbody tr").first
    layer, head = int(first.get_attribute("data-layer")), int(first.get_attribute("data-head"))
    first.click()
    page.wait_for_function("() => window.attnlabState.drawn.matrix !== ''")
    assert (tab.state("tab"), tab.state("layer"), tab.state("head")) == ("matrix", layer, head)
    tab.assert_clean()


def test_matrix_view_renders_and_zooms_4096_tokens(open_tab, pages):
    tab = open_tab(pages["long"])
    page = tab.page
    assert tab.state("tab") == "matrix"  # the head view cannot show 4096 tokens
    size = page.evaluate("document.querySelector('#matrix-canvas').clientWidth")
    assert tab.state("matrix.scale") * 4096 == pytest.approx(
        size * page.evaluate("window.devicePixelRatio")
    )

    def check_causal():
        """The diagonal is dark, column 0 (0.3 each) is tinted, above the diagonal is blank."""
        diagonal = tab.pixels("#matrix-canvas", [(p + 0.5, p + 0.5) for p in range(2, size, 37)])
        assert all(rgb[0] < 200 for rgb in diagonal), diagonal
        assert (
            tab.pixels("#matrix-canvas", [(size - 10, 10), (size * 0.7, size * 0.2)])
            == [[255, 255, 255]] * 2
        )

    check_causal()
    column0 = tab.pixels("#matrix-canvas", [(0.5, size * 0.9)])[0]
    assert column0 != [255, 255, 255] and column0[0] > 150
    inked = page.evaluate(
        """() => {
            const c = document.querySelector('#matrix-canvas');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0;
            for (let p = 0; p < d.length; p += 4) if (d[p] < 250) n++;
            return n;
        }"""
    )
    assert inked >= size  # at least the diagonal
    tab.shot("matrix-4096")

    drawn, scale = tab.state("drawn.matrix"), tab.state("matrix.scale")
    page.click("#zoom-in")
    tab.wait_change("drawn.matrix", drawn)
    assert tab.state("matrix.scale") == pytest.approx(2 * scale)
    assert tab.state("matrix.x0") == pytest.approx(1024)  # centred: cells 1024..3072 shown
    check_causal()
    tab.shot("matrix-4096-zoomed")

    drawn = tab.state("drawn.matrix")
    box = page.locator("#matrix-canvas").bounding_box()
    page.mouse.move(box["x"] + size / 2, box["y"] + size / 2)
    page.mouse.wheel(0, -300)
    tab.wait_change("drawn.matrix", drawn)
    assert tab.state("matrix.scale") > 2 * scale

    x0 = tab.state("matrix.x0")
    page.mouse.down()
    page.mouse.move(box["x"] + size / 2 + 120, box["y"] + size / 2, steps=4)
    page.mouse.up()
    assert tab.wait_change("matrix.x0", x0) < x0  # dragging right shows earlier keys

    page.click("#tab-head")
    assert page.is_visible("#head-note")
    assert "matrix view" in page.inner_text("#head-note")
    assert page.locator(".token").count() == 0
    tab.assert_clean()


def test_vit_overlay_marks_the_patches_cls_attends_to(open_tab, pages):
    tab = open_tab(pages["vit"])
    page = tab.page
    assert tab.state("tab") == "vit"
    assert tab.state("drawn.vit").startswith("self|layer 0|head 0|")
    cell = page.evaluate("document.querySelector('#vit-canvas').clientWidth") / 4

    def at(row, col):
        return tab.pixels("#vit-canvas", [((col + 0.5) * cell, (row + 0.5) * cell)])[0]

    attended, ignored = at(1, 2), at(3, 3)
    assert attended[0] - attended[1] > 100  # red over the grey image
    assert all(abs(v - 128) <= 1 for v in ignored)  # the grey image itself
    tab.shot("vit-overlay")

    drawn = tab.state("drawn.vit")
    page.select_option("#head-select", "1")  # uniform attention: every patch is coloured
    tab.wait_change("drawn.vit", drawn)
    assert at(3, 3)[0] - at(3, 3)[1] > 100
    tab.assert_clean()


def test_view_selector_switches_encoder_decoder_views(open_tab, pages):
    tab = open_tab(pages["seq2seq"])
    page = tab.page
    assert page.is_visible("#view-select")
    assert tab.state("view") == "encoder"
    assert page.locator(".token.query").count() == 7
    drawn = tab.state("drawn.head")

    page.select_option("#view-select", label="cross")
    assert tab.wait_change("drawn.head", drawn).startswith("cross|layer 0|")
    assert tab.state("view") == "cross"
    assert page.locator(".token.query").all_inner_texts() == words(5, "tgt")
    assert page.locator(".token.key").all_inner_texts() == [*words(6, "src"), SCRIPT_TOKEN]
    tab.shot("cross-view")

    page.click("#tab-matrix")
    page.wait_for_function("() => window.attnlabState.drawn.matrix.startsWith('cross|')")
    matrix = tab.state("drawn.matrix")
    page.select_option("#view-select", label="decoder")
    assert tab.wait_change("drawn.matrix", matrix).startswith("decoder|")
    page.click("#tab-stats")
    assert page.locator('#stats-table th[data-key="view"]').count() == 1
    tab.assert_clean()

"""What the explorer page shows for a model and an input: attention views and head statistics.

:func:`explore` runs the model once per view with its configured backend, reads the requested
layers' weights through the pattern points (:func:`attnlab.inspect.attention_weights`) and the
per-head statistics tile-wise (:func:`attnlab.inspect.head_stats`), and returns the
:class:`~attnlab.inspect.page.PageData` that :func:`~attnlab.inspect.page.write_page` turns into
one self-contained HTML file.

Each family gives its own views:

* GPT, BERT: ``self`` over the text's tokens.
* Encoder-decoder: ``encoder`` over the source, ``decoder`` over the target and ``cross`` from
  target to source; without a target text the model's greedy translation is shown.
* ViT: ``self`` over [CLS] and the patches, with the image so the page can draw [CLS]'s
  attention over it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from attnlab.attention.weights import PatternSource
from attnlab.inspect.analysis import detection_scores
from attnlab.inspect.capture import capture_layers, layer_stats
from attnlab.inspect.hooks import check_heads, resolve_layers
from attnlab.inspect.page import AttentionView, PageData

# Dense weights a page may hold, in bytes of float32, before explore() refuses and suggests
# fewer layers or heads: 6 layers x 12 heads x 512 tokens (75 MB) or one head at 8,192 tokens
# (268 MB) pass; every head of a 12 x 12 model at 4,096 tokens (9.7 GB) does not.
PAGE_BUDGET = 300 << 20


def token_strings(tokenizer, ids: Sequence[int]) -> list[str]:
    """A display string per token id: its text, or its vocabulary spelling when the text alone
    is empty or partial (a byte of a multi-byte character); see :func:`visible`."""
    out = []
    for i in ids:
        text = tokenizer.decode([int(i)], skip_special_tokens=False)
        if not text or "\ufffd" in text:
            spelled = getattr(tokenizer, "id_to_token", lambda _: None)(int(i))
            text = spelled if spelled else text or f"<{int(i)}>"
        out.append(visible(text))
    return out


def visible(text: str) -> str:
    """A token's text with line breaks and tabs drawn (↵, ⇥), and a token of spaces alone as
    ␣, so that no token shows as blank."""
    text = text.replace("\r\n", "↵").replace("\n", "↵").replace("\t", "⇥")
    return "␣" * len(text) if text and not text.strip(" ") else text


def _view(
    name: str,
    model: nn.Module,
    inputs: tuple,
    kwargs: dict,
    layers: list,
    heads,
    query_tokens: list[str],
    key_tokens: list[str],
    budget: int,
    tokens: Tensor | None = None,
) -> tuple[AttentionView, list[dict]]:
    """One view of the page and its statistics rows, from one forward pass: each layer's
    pattern source gives the weights, the per-head statistics and, given the key ``tokens``
    (B, Tk) of a self-attention, the head detector scores."""
    chosen = resolve_layers(model, layers)
    n_heads = {key: attn.n_heads for key, (_, attn) in chosen.items()}
    if len(set(n_heads.values())) > 1 and heads is None:
        raise ValueError(
            f"heads: the layers of view {name!r} have different head counts "
            f"({sorted(set(n_heads.values()))}); choose heads present in every layer"
        )
    checked = [check_heads(heads, n, f"layer {key!r}").tolist() for key, n in n_heads.items()]
    head_ids = checked[0]  # the same in every layer (checked against each)
    need = 4 * len(chosen) * len(head_ids) * len(query_tokens) * len(key_tokens)
    if need > budget:
        raise ValueError(
            f"heads: the {name!r} view would hold {need / 2**20:,.0f} MiB of weights "
            f"({len(chosen)} layers x {len(head_ids)} heads x {len(query_tokens)} x "
            f"{len(key_tokens)} tokens), over {budget / 2**20:,.0f} MiB; choose fewer layers or "
            f"heads (for example --layers 0 --heads 0), or read per-head statistics with "
            f"`attnlab heads`"
        )
    weights: dict = {}
    metrics: dict = {}

    def consume(key, layer_name: str, attn, source: PatternSource) -> None:
        idx = torch.tensor(head_ids, device=source.q.device)
        weights[key] = source.weights(idx)[0].float()  # (h, Tq, Tk)
        stats = layer_stats(layer_name, source, idx)
        values = {m: getattr(stats, m)[0] for m in stats.metrics}  # (h,) each
        if tokens is not None:
            scores = detection_scores(source, tokens, heads=idx)
            values |= {detector: s[0] for detector, s in scores.items()}
        metrics[key] = values

    capture_layers(model, list(chosen), consume, inputs, kwargs)
    labels = [key if isinstance(key, int) else i for i, key in enumerate(chosen)]
    rows = [
        {"view": name, "layer": label, "head": head}
        | {m: float(v[j]) for m, v in metrics[key].items()}
        for label, key in zip(labels, chosen, strict=True)
        for j, head in enumerate(head_ids)
    ]
    view = AttentionView(
        name=name,
        query_tokens=query_tokens,
        key_tokens=key_tokens,
        layers=labels,
        heads=head_ids,
        weights=torch.stack([weights[key] for key in chosen]),  # (L, h, Tq, Tk)
    )
    return view, rows


def explore(
    model: nn.Module,
    tokenizer=None,
    text: str | None = None,
    *,
    target: str | None = None,
    image: Tensor | None = None,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    title: str = "attnlab attention explorer",
    meta: dict[str, str] | None = None,
    max_bytes: int = PAGE_BUDGET,
) -> PageData:
    """Collect the page's data for ``model`` on one input.

    Args:
        tokenizer, text: the text input (GPT, BERT, the encoder-decoder's source).
        target: the encoder-decoder's target text (default: its greedy translation).
        image: the ViT's input (C, H, W).
        layers: block indices shown (default all; the encoder-decoder applies them to the
            encoder and decoder stacks alike).
        heads: head indices shown (default all).
        max_bytes: ValueError suggesting --layers/--heads before the weights exceed this.
    """
    from attnlab.models import BERT, GPT, EncoderDecoder, ViT
    from attnlab.models.info import model_info

    model.eval()
    meta = dict(meta or {})
    meta.setdefault("architecture", model_info(model).name)
    device = next(model.parameters()).device
    views: list[AttentionView] = []
    stats: list[dict] = []
    patch_grid = None
    if isinstance(model, ViT):
        if image is None:
            raise ValueError("image: a ViT needs an image to show its attention")
        c = model.config
        if image.dim() != 3 or tuple(image.shape) != (c.channels, c.image_size, c.image_size):
            raise ValueError(
                f"image: expected ({c.channels}, {c.image_size}, {c.image_size}) for this ViT, "
                f"got {tuple(image.shape)}"
            )
        side = c.image_size // c.patch_size
        patch_grid = (side, side)
        tokens = ["[CLS]"] + [f"patch {r},{q}" for r in range(side) for q in range(side)]
        batch = (image[None].to(device),)
        logits = model(*batch).logits[0]
        meta.setdefault("prediction", f"class {int(logits.argmax())}")
        view, rows = _view("self", model, batch, {}, layers, heads, tokens, tokens, max_bytes)
        views.append(view)
        stats += rows
    else:
        if tokenizer is None or text is None:
            raise ValueError("text: this model reads text; expected a tokenizer and a text")
        if isinstance(model, EncoderDecoder):
            views, stats = _translation(model, tokenizer, text, target, layers, heads, max_bytes)
        elif isinstance(model, (GPT, BERT)):
            ids = tokenizer.encode(text)
            context = model.config.max_len
            if not ids:
                raise ValueError("text: expected text that gives at least one token")
            if len(ids) > context:
                raise ValueError(
                    f"text: {len(ids):,} tokens exceed the model's context of {context:,}; "
                    f"shorten the text"
                )
            tokens = token_strings(tokenizer, ids)
            batch = (torch.tensor([ids], device=device),)
            view, rows = _view(
                "self", model, batch, {}, layers, heads, tokens, tokens, max_bytes, batch[0]
            )
            views.append(view)
            stats += rows
        else:
            raise TypeError(f"model: expected an attnlab model, got {type(model).__name__}")
    return PageData(
        title=title,
        views=views,
        stats=stats,
        image=image.detach().float().cpu().clamp(0, 1) if image is not None else None,
        patch_grid=patch_grid,
        meta=meta,
    )


def _translation(model, tokenizer, text, target, layers, heads, budget):
    c = model.config
    device = next(model.parameters()).device
    src = tokenizer.encode(text, add_special_tokens=False)
    if not src:
        raise ValueError("text: expected text that gives at least one token")
    if len(src) > c.max_len:
        raise ValueError(f"text: {len(src):,} tokens exceed the model's context of {c.max_len:,}")
    src_ids = torch.tensor([src], device=device)
    if target is None:
        with torch.no_grad():
            out = model.generate(src_ids, max_new_tokens=min(c.max_len - 1, 2 * len(src) + 8))
        tgt = [t for t in out[0].tolist() if t != c.pad_id]
    else:
        tgt = tokenizer.encode(target, add_special_tokens=False)
    tgt = [c.bos_id, *tgt][: c.max_len]
    tgt_ids = torch.tensor([tgt], device=device)
    src_tokens = token_strings(tokenizer, src)
    tgt_tokens = ["<bos>", *token_strings(tokenizer, tgt[1:])]
    kwargs = {"decoder_input_ids": tgt_ids}
    n_enc, n_dec = len(model.encoder), len(model.decoder)
    enc_layers = list(range(n_enc)) if layers is None else list(layers)
    dec_layers = list(range(n_dec)) if layers is None else list(layers)
    for i in enc_layers + dec_layers:
        if isinstance(i, bool) or not isinstance(i, int):
            raise TypeError(f"layers: expected block indices, got {i!r}")
    for i, n in [(i, n_enc) for i in enc_layers] + [(i, n_dec) for i in dec_layers]:
        if not 0 <= i < n:
            raise ValueError(f"layers: layer {i} is out of range; expected 0 <= layer < {n}")
    views, stats = [], []
    # The detectors score self-attention over one sequence: the source's or the target's ids.
    for name, stack, chosen, q_tok, k_tok, ids in (
        ("encoder", "encoder.blocks.{}.attn", enc_layers, src_tokens, src_tokens, src_ids),
        ("decoder", "decoder.blocks.{}.attn", dec_layers, tgt_tokens, tgt_tokens, tgt_ids),
        ("cross", "decoder.blocks.{}.cross", dec_layers, tgt_tokens, src_tokens, None),
    ):
        names = [stack.format(i) for i in chosen]
        view, rows = _view(name, model, (src_ids,), kwargs, names, heads, q_tok, k_tok, budget, ids)
        view.layers = list(chosen)
        for row, layer in zip(rows, [i for i in chosen for _ in view.heads], strict=True):
            row["layer"] = layer
        views.append(view)
        stats += rows
    return views, stats

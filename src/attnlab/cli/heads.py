"""``attnlab heads``: one row per attention head of a model on one text: attention statistics
(entropy, distance, first-token sink, previous-token mass) and head detector scores."""

from __future__ import annotations

import click
import torch

from attnlab.cli.backends import format_table
from attnlab.cli.options import encode_text, parse_device, parse_indices

STATS = ("entropy", "distance", "sink", "previous")


def parse_layers(text: str | None) -> list[int | str] | None:
    """``"0,2"``, ``"0-3"`` or attention module names (``"decoder.blocks.0.cross"``), mixed by
    commas; None stays None."""
    if text is None:
        return None
    layers: list[int | str] = []
    for part in (p.strip() for p in text.split(",")):
        if any(c.isalpha() for c in part):
            layers.append(part)
        else:
            layers.extend(parse_indices(part, "--layers"))
    if len(set(layers)) != len(layers):
        raise ValueError(f"--layers: expected each layer once, got {text!r}")
    return layers


def head_rows(model, input_ids: torch.Tensor, layers=None, **kwargs) -> list[dict]:
    """The table of :func:`attnlab.inspect.stats_table` for ``model(input_ids, **kwargs)``,
    with the head detector scores of self-attention layers added where
    :mod:`attnlab.inspect.analysis` provides them (cross-attention rows get none)."""
    from attnlab.inspect import head_stats, resolve_layers, stats_table

    rows = stats_table(head_stats(model, input_ids, layers=layers, **kwargs))
    try:
        from attnlab.inspect.analysis import detect_heads
    except ImportError:  # the detectors are optional: the statistics stand alone
        return rows
    cross = {id(m.cross) for m in model.modules() if getattr(m, "cross", None) is not None}
    keys = [k for k, (_, m) in resolve_layers(model, layers).items() if id(m) not in cross]
    if not keys:
        return rows
    scores = detect_heads(model, input_ids, layers=keys, **kwargs)  # name -> (L, h)
    by_head = {
        (key, head): {name: float(table[i, head]) for name, table in scores.items()}
        for i, key in enumerate(keys)
        for head in range(scores[next(iter(scores))].shape[1])
    }
    for row in rows:
        row.update(by_head.get((row["layer"], row["head"]), {}))
    return rows


@click.command()
@click.argument("source")
@click.option(
    "--text", required=True, help="The input text (for an encoder-decoder, also the target)."
)
@click.option("--layers", default=None, help="Layers: 0,2 or 0-3 or module names (default all).")
@click.option("--sort", "sort_by", default=None, help="Sort by this column, highest first.")
@click.option("--device", default="cpu", show_default=True)
def heads(source, text, layers, sort_by, device) -> None:
    """One row per attention head of SOURCE (a run, a checkpoint, a Hugging Face directory or a
    GGUF file) on --text: mean entropy of its attention (nats), mean distance to the keys it
    attends, mass on the first token (sink) and on the previous token, and the head detector
    scores previous_token, first_token, duplicate_token and induction (self-attention). Heads
    are numbered as SOURCE has them (a pruned model's config.layer_heads maps them back)."""
    import attnlab
    from attnlab.models import EncoderDecoder

    device = parse_device(device)
    layer_keys = parse_layers(layers)
    model, tokenizer = attnlab.load(source)
    ids = encode_text(tokenizer, text, "--text", source, "SOURCE")
    model.to(device)
    context = getattr(model.config, "max_len", None)
    if context is not None and len(ids) > context:
        raise ValueError(
            f"--text: {len(ids):,} tokens exceed the model's context of {context:,} tokens"
        )
    input_ids = torch.tensor([ids], device=device)
    kwargs = {}
    if isinstance(model, EncoderDecoder):  # the text is the source and, shifted, the target
        kwargs["decoder_input_ids"] = model.shift_right(input_ids)
    try:
        rows = head_rows(model, input_ids, layer_keys, **kwargs)
    except (ValueError, TypeError) as exc:
        message = str(exc)
        raise ValueError(f"--{message}" if message.startswith("layers:") else message) from None
    columns = [c for c in rows[0] if c not in ("layer", "head")] if rows else list(STATS)
    if sort_by is not None:
        if sort_by not in columns:
            raise ValueError(f"--sort: expected one of {', '.join(columns)}, got {sort_by!r}")
        rows.sort(key=lambda r: (sort_by not in r, -r.get(sort_by, 0.0)))  # rows without last
    shown = [
        {"layer": str(r["layer"]), "head": str(r["head"])}
        | {c: f"{r[c]:.3f}" if c in r else "-" for c in columns}
        for r in rows
    ]
    click.echo(format_table(shown))

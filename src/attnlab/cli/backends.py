"""``attnlab backends``: the attention backends, what each supports, and what "auto" picks; the
device's bf16 support and the precision "auto" picks on it."""

from __future__ import annotations

import click
import torch

from attnlab.attention import backend_names, get_backend, masks
from attnlab.attention.call import make_call
from attnlab.attention.dispatch import priority
from attnlab.cli.options import parse_device
from attnlab.precision import bf16_capability, resolve_dtype


def _yes(flag: bool) -> str:
    return "yes" if flag else "-"


def backend_table(device: str = "cpu") -> list[dict[str, str]]:
    """One row per registered backend: capabilities and whether it can train on ``device``."""
    q = torch.zeros(1, 1, 4, 16, device=device, requires_grad=True)
    train_call = make_call(
        q, q, q, mask=None, bias=None, scale=None, dropout_p=0.0, return_weights=False
    )
    rows = []
    for name in backend_names():
        backend = get_backend(name)
        caps = backend.capabilities
        refusal = backend.not_supported_reasons(train_call)
        rows.append(
            {
                "backend": name,
                "devices": ",".join(sorted(caps.devices)),
                f"train on {device}": _yes(not refusal),
                "masks": _yes(caps.masks),
                "biases": _yes(caps.biases),
                "dropout": _yes(caps.dropout),
                "weights": _yes(caps.weights),
                "about": backend.description,
            }
        )
    return rows


def format_table(rows: list[dict[str, str]]) -> str:
    """Plain-text table with aligned columns."""
    if not rows:
        return ""
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols)]
    lines.append("  ".join("-" * widths[c] for c in cols))
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in cols) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


@click.command()
@click.option("--device", default="cpu", show_default=True, help="Device to check support on.")
def backends(device: str) -> None:
    """List attention backends and their capabilities."""
    device = parse_device(device)
    click.echo(format_table(backend_table(device)))
    for name in backend_names():
        for note in get_backend(name).capabilities.notes:
            click.echo(f"  {name}: {note}")
    q = torch.zeros(1, 1, 4096, 64, device=device)
    dense = make_call(
        q, q, q, mask=masks.causal(), bias=None, scale=None, dropout_p=0.0, return_weights=False
    )
    sparse = make_call(
        q,
        q,
        q,
        mask=masks.sliding_window(256),
        bias=None,
        scale=None,
        dropout_p=0.0,
        return_weights=False,
    )
    click.echo(f"\nauto tries, causal T=4096:          {' > '.join(priority(dense))}")
    click.echo(f"auto tries, sliding window 256/4096: {' > '.join(priority(sparse))}")
    auto = "bf16" if resolve_dtype("auto", device) == torch.bfloat16 else "fp32"
    click.echo(f"\nbf16: {bf16_capability(device)}; precision auto picks {auto}")

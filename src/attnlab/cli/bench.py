"""``attnlab bench``: a quick attention benchmark, in this process, for a first look.

Every case runs in this one process, so it finishes in seconds at the defaults, but peak memory
is not measured: a clean number needs a fresh process per case. The full benchmark, with memory
and the goals, is ``benchmarks/attention.py`` (``make bench``).
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import torch

from attnlab.bench.attention import backend_choices, bench_case, format_rows
from attnlab.cli.options import parse_device
from attnlab.files import atomic_write_text

_MASKS = ("causal", "window256")
_MODES = ("fwd", "fwd+bwd")


def _parse_lengths(text: str) -> list[int]:
    parts = [p.strip() for p in text.split(",")]
    if not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"--lengths: expected comma-separated positive integers, got {text!r}")
    return [int(p) for p in parts]


def _parse_backends(text: str) -> list[str]:
    names = [p.strip() for p in text.split(",")]
    unknown = [n for n in names if n not in backend_choices()]
    if unknown:
        raise ValueError(
            f"--backends: expected names from {', '.join(backend_choices())}, "
            f"got unknown {', '.join(map(repr, unknown))}"
        )
    return names


def _parse_choice(option: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{option}: expected one of {', '.join(choices)}, got {value!r}")
    return value


def _parse_repeats(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise ValueError(f"--repeats: expected a positive integer, got {text!r}")
    return int(text)


# Values are parsed in the command body, so every bad value ends as one line and exit status 2
# through the group's ValueError handling (click's own errors print the usage too).
@click.command()
@click.option(
    "--lengths",
    default="256,1024,2048",
    show_default=True,
    help="Comma-separated sequence lengths.",
)
@click.option(
    "--backends",
    default="auto,sdpa,chunked,torch-sdpa",
    show_default=True,
    help="Comma-separated attnlab backends, 'auto', or 'torch-sdpa' (plain PyTorch).",
)
@click.option("--mask", default="causal", show_default=True, help="causal or window256.")
@click.option("--mode", default="fwd+bwd", show_default=True, help="fwd or fwd+bwd.")
@click.option(
    "--repeats",
    default="3",
    show_default=True,
    help="Timed calls per case at least (median; short calls repeat for 0.5 s).",
)
@click.option("--device", default="cpu", show_default=True, help="Torch device.")
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the rows as JSON to this file.",
)
def bench(
    lengths: str,
    backends: str,
    mask: str,
    mode: str,
    repeats: str,
    device: str,
    json_path: Path | None,
) -> None:
    """Time attention backends at a few lengths (B=1, H=8, D=64, float32).

    Times are medians of single calls, warm-up excluded, measured in this process. Peak memory
    and the goals come from the full benchmark: benchmarks/attention.py.
    """
    length_list = _parse_lengths(lengths)
    backend_list = _parse_backends(backends)
    mask = _parse_choice("--mask", mask, _MASKS)
    mode = _parse_choice("--mode", mode, _MODES)
    n_repeats = _parse_repeats(repeats)
    device = parse_device(device)

    rows = [
        bench_case(
            backend,
            T,
            mode=mode,
            mask=mask,
            device=device,
            repeats=n_repeats,
            measure="time",
        )
        for T in length_list
        for backend in backend_list
    ]
    click.echo(format_rows(rows))
    click.echo(
        f"\n{mode}, {mask} mask, B=1 H=8 D=64 float32 on {device}, "
        f"{torch.get_num_threads()} threads; median of at least {n_repeats} calls "
        "(0.5 s or more per case), in ms."
    )
    if json_path is not None:
        atomic_write_text(json_path, json.dumps(rows, indent=1) + "\n")
        click.echo(f"wrote {json_path}")

"""``attnlab predict``: classify texts with a trained sentence classifier.

Texts come from the arguments, from ``--file`` (one text per line) or, when neither is given,
from standard input (one per line). Output is one line per text, in input order, so it lines up
with the input (``paste input.txt predictions.txt``): ``LABEL<TAB>PROBABILITY`` (the most
probable class and its probability, 4 decimals); with ``--json``, one JSON object per line:
``{"text", "label", "probability", "probabilities": {class: probability, ...}}``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from attnlab.cli.options import parse_device


def _lines(text: str) -> list[str]:
    """One text per line; the final line end closes the last text rather than starting one.
    Only "\\n" separates texts (not the other characters ``str.splitlines`` breaks at)."""
    lines = text.replace("\r\n", "\n").split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines


def _read_texts(texts: tuple[str, ...], file: str | None) -> list[str]:
    if texts and file is not None:
        raise ValueError("--file: expected texts as arguments or a --file, not both")
    if texts:
        return list(texts)
    if file is not None:
        from attnlab.data.text_files import read_text

        path = Path(file)
        if not path.is_file():
            raise FileNotFoundError(f"--file: {path} does not exist (expected a text file)")
        found = _lines(read_text(path, argument="--file"))
        if not found:
            raise ValueError(f"--file: expected one text per line, got an empty file {path}")
        return found
    found = _lines(sys.stdin.read())
    if not found:
        raise ValueError("texts: expected texts as arguments, in --file or on stdin, got none")
    return found


@click.command()
@click.argument("source")
@click.argument("texts", nargs=-1)
@click.option("--file", "file", metavar="PATH", default=None, help="Texts, one per line.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line, every class.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--device", default="cpu", show_default=True)
def predict(source, texts, file, as_json, batch_size, device) -> None:
    """Classify TEXTS (or the lines of --file, or of stdin) with the classifier at SOURCE: a run
    directory, a checkpoint or a Hugging Face directory of a BERT with head='classify'.

    Prints one line per text, in order: LABEL<TAB>PROBABILITY, or with --json
    {"text", "label", "probability", "probabilities"}."""
    import attnlab
    from attnlab.predict import check_classifier, iter_predict

    inputs = _read_texts(texts, file)
    loaded = attnlab.load(source, device=parse_device(device))
    check_classifier(loaded.model, source)
    if loaded.tokenizer is None:
        raise ValueError(f"{source}: has no tokenizer to turn the texts into ids")
    for p in iter_predict(loaded.model, loaded.tokenizer, inputs, batch_size=batch_size):
        if as_json:
            record = {
                "text": p.text,
                "label": p.label,
                "probability": p.probability,
                "probabilities": p.probabilities,
            }
            click.echo(json.dumps(record, ensure_ascii=False))
        else:
            click.echo(f"{p.label}\t{p.probability:.4f}")

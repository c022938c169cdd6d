"""``attnlab inspect``: write the attention explorer page of a model on one input."""

from __future__ import annotations

from pathlib import Path

import click
import torch

from attnlab.cli.options import parse_device, parse_indices
from attnlab.cli.sample import read_prompt


def read_image(path: str | None, digit: int | None, channels: int, size: int) -> torch.Tensor:
    """The ViT's input (C, size, size) in [0, 1] from an image file (PNG, JPEG or .npy) or one
    of scikit-learn's digits; resized to the model's size, colour averaged to grey for one
    channel."""
    if (path is None) == (digit is None):
        raise ValueError("--image, --digit: a ViT needs exactly one of them")
    if digit is not None:
        from attnlab.data.digits import digits

        images, _ = digits()
        if not 0 <= digit < len(images):
            raise ValueError(f"--digit: expected 0 <= digit < {len(images)}, got {digit}")
        image = images[digit]
    else:
        file = Path(path)
        if not file.is_file():
            raise ValueError(f"--image: {file} is not a file")
        if file.suffix.lower() == ".npy":
            import numpy as np

            array = np.load(file, allow_pickle=False)
        else:
            import matplotlib.image

            try:
                array = matplotlib.image.imread(file)
            except (OSError, ValueError, SyntaxError) as exc:
                raise ValueError(f"--image: cannot read {file} as an image ({exc})") from None
        image = torch.as_tensor(array, dtype=torch.float32)
        if image.max() > 1:
            image = image / 255.0
        if image.dim() == 2:
            image = image[None]
        elif image.dim() == 3 and image.shape[-1] in (1, 3, 4):
            image = image[..., :3].permute(2, 0, 1)  # (H, W, C) -> (C, H, W)
        else:
            raise ValueError(f"--image: expected a 2-D or colour image, got shape {array.shape}")
    if image.shape[0] != channels:
        image = image.mean(0, keepdim=True).expand(channels, -1, -1)
    if image.shape[1:] != (size, size):
        image = torch.nn.functional.interpolate(
            image[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )[0]
    return image.clamp(0, 1).contiguous()


@click.command("inspect")
@click.argument("source")
@click.option("--text", default=None, help="The input text (GPT, BERT, translation source).")
@click.option("--text-file", default=None, help="Read the text from this file ('-': stdin).")
@click.option("--target", default=None, help="Encoder-decoder: the target text (default: its own).")
@click.option("--image", default=None, help="ViT: an image file (PNG, JPEG or .npy).")
@click.option("--digit", type=int, default=None, help="ViT: scikit-learn's digit number N.")
@click.option("--layers", default=None, help="Layers to show, e.g. 0,2 or 0-3 (default all).")
@click.option("--heads", default=None, help="Heads to show, e.g. 0,5 or 0-3 (default all).")
@click.option("--out", "out", default="attention.html", show_default=True, help="Page to write.")
@click.option("--device", default="cpu", show_default=True)
def inspect_page(source, text, text_file, target, image, digit, layers, heads, out, device) -> None:
    """Write the attention explorer of SOURCE (a run, a checkpoint, a Hugging Face directory or a
    GGUF file) on one input: one self-contained HTML page (head, model and matrix views, head
    statistics) that opens from disk and loads nothing from the network."""
    import attnlab
    from attnlab.inspect.explorer import explore
    from attnlab.inspect.page import write_page
    from attnlab.models import ViT

    device = parse_device(device)
    layer_ids = parse_indices(layers, "--layers")
    head_ids = parse_indices(heads, "--heads")
    model, tokenizer = attnlab.load(source)
    model.to(device)
    picture = None
    words = None
    if isinstance(model, ViT):
        c = model.config
        picture = read_image(image, digit, c.channels, c.image_size)
    else:
        if text is None and text_file is None:
            raise ValueError("--text: expected the text to inspect (or --text-file)")
        words = read_prompt(text, text_file)
        if tokenizer is None:
            raise ValueError(f"SOURCE: {source} has no tokenizer to turn --text into tokens")
    meta = {"source": str(source), "model": type(model).__name__}
    if words is not None:
        meta["text"] = words if len(words) <= 400 else words[:400] + "..."
    try:
        data = explore(
            model,
            tokenizer,
            words,
            target=target,
            image=picture,
            layers=layer_ids,
            heads=head_ids,
            title=f"attention of {Path(str(source)).name}",
            meta=meta,
        )
    except (ValueError, TypeError) as exc:
        message = str(exc)
        for name in ("layers", "heads", "image", "text"):
            if message.startswith(f"{name}:"):
                message = f"--{message}"
        raise ValueError(message) from None
    path = write_page(out, data)
    shape = ", ".join(
        f"{v.name} {len(v.layers)} layers x {len(v.heads)} heads x {len(v.query_tokens)} tokens"
        for v in data.views
    )
    click.echo(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MB): {shape}")

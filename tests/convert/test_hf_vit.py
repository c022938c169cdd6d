"""ViT checkpoints: transformers' ViTForImageClassification loads with equal logits and
attentions, round trips exactly, and attnlab-built ViTs load in transformers."""

from __future__ import annotations

import pytest
import torch
from convert_helpers import randomize as _randomize
from safetensors.torch import load_file
from transformers import ViTConfig as HFViTConfig
from transformers import ViTForImageClassification

from attnlab.convert import load_hf, save_hf
from attnlab.models import ViT, ViTConfig


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = HFViTConfig(
        image_size=8,
        patch_size=2,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        num_labels=5,
    )
    config._attn_implementation = "eager"  # transformers returns attention weights only eagerly
    hf = _randomize(ViTForImageClassification(config))
    directory = tmp_path_factory.mktemp("vit")
    hf.save_pretrained(directory, safe_serialization=True)
    return directory, hf


def test_vit_logits_and_attentions_equal_transformers(hf_dir):
    directory, hf = hf_dir
    ours = load_hf(directory)
    assert isinstance(ours, ViT) and ours.config.num_labels == 5
    images = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        want = hf(pixel_values=images, output_attentions=True)
        got = ours(images, output_attentions=True)
    torch.testing.assert_close(got.logits, want.logits, atol=1e-4, rtol=0)
    for a, b in zip(got.attentions, want.attentions, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_vit_round_trip_is_exact(hf_dir, tmp_path):
    directory, _ = hf_dir
    save_hf(load_hf(directory), tmp_path)
    back = ViTForImageClassification.from_pretrained(tmp_path).eval()
    original_model = ViTForImageClassification.from_pretrained(directory).eval()
    images = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        want = original_model(pixel_values=images).logits
        assert torch.equal(back(pixel_values=images).logits, want)
    written, original = (
        load_file(tmp_path / "model.safetensors"),
        load_file(directory / "model.safetensors"),
    )
    assert written.keys() == original.keys()
    assert all(torch.equal(written[k], original[k]) for k in written)


def test_attnlab_vit_loads_in_transformers(tmp_path):
    torch.manual_seed(0)
    ours = ViT(
        ViTConfig(image_size=8, patch_size=4, channels=1, num_labels=3, n_layer=2, n_head=2,
                  dim=16, hidden=32)
    ).eval()  # fmt: skip
    save_hf(ours, tmp_path)
    hf = ViTForImageClassification.from_pretrained(tmp_path).eval()
    images = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(hf(pixel_values=images).logits, ours(images).logits,
                                   atol=1e-5, rtol=0)  # fmt: skip
    with pytest.raises(ValueError, match="pool='mean'"):
        save_hf(ViT(ViTConfig(**{**ours.config.__dict__, "pool": "mean"})), tmp_path / "mean")

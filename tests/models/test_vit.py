"""Vision Transformer: patching, presets, masks, errors, learning."""

from __future__ import annotations

import pytest
import torch

from attnlab.models import ViT, ViTConfig, from_preset

TINY = {
    "image_size": 8,
    "patch_size": 2,
    "channels": 1,
    "num_labels": 4,
    "n_layer": 2,
    "n_head": 2,
    "dim": 16,
    "hidden": 32,
}


def test_vit_tiny_preset_is_deit_tiny():
    model = from_preset("vit-tiny")
    c = model.config
    assert (c.image_size, c.patch_size, c.dim, c.n_layer, c.n_head) == (224, 16, 192, 12, 3)
    assert c.n_patches == 196 and model.pos.max_len == 197
    n = sum(p.numel() for p in model.parameters())
    assert 5.6e6 < n < 5.8e6  # DeiT-Ti: 5.7M


def test_patches_are_embedded_in_row_major_order():
    torch.manual_seed(0)
    model = ViT(ViTConfig(**TINY)).eval()
    images = torch.randn(3, 1, 8, 8)
    x = model.embed(images)
    assert x.shape == (3, 17, 16)
    # Patch (row 1, column 2) of 2 x 2 pixels is token 1 + 1 * 4 + 2, embedded linearly.
    patch = images[:, :, 2:4, 4:6].reshape(3, -1)
    want = patch @ model.patch.weight.reshape(16, -1).t() + model.patch.bias
    torch.testing.assert_close(x[:, 7] - model.pos.weight[7], want, atol=1e-6, rtol=0)
    torch.testing.assert_close(x[:, 0], (model.cls[0, 0] + model.pos.weight[0]).expand(3, -1))


def test_outputs_loss_attentions_and_mask():
    torch.manual_seed(0)
    model = ViT(ViTConfig(**TINY, pool="mean")).eval()
    images = torch.randn(2, 1, 8, 8)
    labels = torch.tensor([1, 3])
    out = model(images, labels=labels, output_attentions=True, output_hidden_states=True)
    assert out.logits.shape == (2, 4) and out.loss.ndim == 0
    assert len(out.attentions) == 2 and out.attentions[0].shape == (2, 2, 17, 17)
    assert len(out.hidden_states) == 3
    # Masking patches = no token attends to them and the mean skips them; changing those
    # patches then changes nothing.
    keep = torch.ones(2, 17, dtype=torch.long)
    keep[:, 9:] = 0  # the lower half of the image
    changed = images.clone()
    changed[:, :, 4:] = torch.randn(2, 1, 4, 8)
    with torch.no_grad():
        a = model(images, keep).logits
        b = model(changed, keep).logits
    torch.testing.assert_close(a, b)
    assert not torch.allclose(model(images).logits, model(changed).logits)


def test_errors():
    model = ViT(ViTConfig(**TINY))
    want = r"images: expected \(B, 1, 8, 8\), got shape \(2, 3, 8, 8\)"
    with pytest.raises(ValueError, match=want):
        model(torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match="images: expected a floating-point tensor"):
        model(torch.zeros(2, 1, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="patch_size: expected a divisor of image_size=8, got 3"):
        ViTConfig(**{**TINY, "patch_size": 3})
    with pytest.raises(ValueError, match="pool: expected one of cls, mean"):
        ViTConfig(**TINY, pool="max")
    with pytest.raises(ValueError, match=r"preset: unknown model preset 'vit-tiyn' \(did you mean"):
        from_preset("vit-tiyn")


def test_learns_which_quadrant_is_bright():
    torch.manual_seed(0)
    model = ViT(ViTConfig(**TINY))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def batch(n):
        labels = torch.randint(0, 4, (n,))
        images = torch.randn(n, 1, 8, 8) * 0.5
        for i, q in enumerate(labels.tolist()):
            r, c = divmod(q, 2)
            images[i, 0, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4] += 1.0
        return images, labels

    for _ in range(200):
        images, labels = batch(64)
        loss = model(images, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    images, labels = batch(256)
    with torch.no_grad():
        accuracy = (model(images).logits.argmax(-1) == labels).float().mean()
    assert accuracy > 0.95

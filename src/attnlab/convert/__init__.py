"""Checkpoints in and out: Hugging Face-format directories (safetensors + config.json)."""

from attnlab.convert.hf import load_hf, save_hf

__all__ = ["load_hf", "save_hf"]

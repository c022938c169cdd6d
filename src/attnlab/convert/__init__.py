"""Checkpoints in and out: Hugging Face-format directories (safetensors + config.json) and
llama.cpp GGUF files."""

from attnlab.convert.gguf import load_gguf
from attnlab.convert.hf import load_hf, save_hf

__all__ = ["load_gguf", "load_hf", "save_hf"]

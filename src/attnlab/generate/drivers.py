"""How the generation engine runs each model family: prefill, then one token per step.

A driver holds what one generation needs besides the caches (for an encoder-decoder: the
encoded source) and offers the two calls the engine makes (gpt-fast's ``prefill`` and
``decode_one_token``):

* ``prefill(ids, mask, caches)``: the (left-padded) prompt (B, T) through the model, filling the
  caches; the logits of its last position (B, V) and each row's next position (B, 1).
* ``step(token, positions, cache_positions, caches)``: one token (B, 1) at model positions
  (B, 1) and cache position (1,); its logits (B, V). The shapes are the same every step, so
  the step compiles once (:func:`compiled`) and replays.

Drivers are looked up by model class in ``DRIVERS`` (a registry, not a chain of ifs).

Shapes: B rows, T prompt tokens, S source tokens, V vocabulary.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable

import torch
from torch import Tensor, nn

from attnlab.attention.caches import Caches
from attnlab.memory import release_freed_memory
from attnlab.models.encoder_decoder import EncoderDecoder
from attnlab.models.gpt import GPT
from attnlab.quantize.linear import Int4Linear


class DecoderOnly:
    """GPT (both flavours): the prompt is the start of the sequence."""

    seq2seq = False

    def __init__(self, model: GPT, input_ids: Tensor, attention_mask: Tensor | None) -> None:
        self.model = model
        self.context = model.config.max_len
        self.vocab = model.head.out_features
        self.prompt = input_ids
        self.prompt_mask = _mask(input_ids, attention_mask)

    def make_caches(self, batch: int, max_len: int, **kwargs) -> Caches:
        return self.model.make_caches(batch, max_len, **_unchecked(kwargs))

    def prefill(self, ids: Tensor, mask: Tensor, caches: Caches) -> tuple[Tensor, Tensor]:
        logits = self.model(ids, mask, caches=caches, logits_to_keep=1).logits[:, -1]  # (B, V)
        return logits, mask.sum(-1, keepdim=True)  # next position: real tokens so far (B, 1)

    def step(self, token, positions, cache_positions, caches) -> Tensor:
        return _gpt_step(self.model, token, positions, cache_positions, caches)

    def compiled_step(self, mode: str | None) -> Callable:
        step = compiled(_gpt_step, mode)
        return lambda token, pos, cpos, caches: step(self.model, token, pos, cpos, caches)


class Seq2Seq:
    """The encoder-decoder: the source is encoded once; the target starts with ``bos_id``."""

    seq2seq = True

    def __init__(
        self, model: EncoderDecoder, input_ids: Tensor, attention_mask: Tensor | None
    ) -> None:
        self.model = model
        self.context = model.config.max_len
        self.vocab = model.head.out_features
        self.source, self.source_mask = input_ids, attention_mask
        self.prompt = input_ids.new_full((input_ids.shape[0], 1), model.config.bos_id)
        self.prompt_mask = torch.ones_like(self.prompt)
        self.memory: Tensor | None = None

    def make_caches(self, batch: int, max_len: int, **kwargs) -> Caches:
        return self.model.make_caches(batch, self.source.shape[1], max_len, **_unchecked(kwargs))

    def prefill(self, ids: Tensor, mask: Tensor, caches: Caches) -> tuple[Tensor, Tensor]:
        if self.memory is None:
            self.memory = self.model.encode(self.source, self.source_mask)  # (B, S, C)
        logits = self.model(
            self.source,
            self.source_mask,
            decoder_input_ids=ids,
            decoder_attention_mask=mask,
            encoder_hidden=self.memory,
            caches=caches,
        ).logits[:, -1]
        return logits, mask.sum(-1, keepdim=True)

    def step(self, token, positions, cache_positions, caches) -> Tensor:
        return _seq2seq_step(
            self.model, self.source, self.source_mask, self.memory, token, cache_positions, caches
        )

    def compiled_step(self, mode: str | None) -> Callable:
        step = compiled(_seq2seq_step, mode)
        return lambda token, pos, cpos, caches: step(
            self.model, self.source, self.source_mask, self.memory, token, cpos, caches
        )

    def reorder(self, indices: Tensor) -> None:
        """Rows follow ``indices`` (beam search)."""
        self.source = self.source.index_select(0, indices)
        if self.source_mask is not None:
            self.source_mask = self.source_mask.index_select(0, indices)
        if self.memory is not None:
            self.memory = self.memory.index_select(0, indices)


def _unchecked(kwargs: dict) -> dict:
    # The engine computes every cache position itself: checking their values would cost two
    # waits for the device per layer and step.
    return {"check_values": False, **kwargs}


def _gpt_step(model, token, positions, cache_positions, caches) -> Tensor:
    out = model(token, caches=caches, positions=positions, cache_positions=cache_positions)
    return out.logits[:, -1]  # (B, V)


def _seq2seq_step(model, source, source_mask, memory, token, cache_positions, caches) -> Tensor:
    out = model(
        source,
        source_mask,
        decoder_input_ids=token,
        encoder_hidden=memory,
        caches=caches,
        cache_positions=cache_positions,
    )
    return out.logits[:, -1]  # (B, V)


def _mask(input_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
    if attention_mask is None:
        return torch.ones_like(input_ids)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask: expected the shape of input_ids {tuple(input_ids.shape)}, got "
            f"{tuple(attention_mask.shape)}"
        )
    if attention_mask.dtype.is_floating_point:
        raise TypeError(
            f"attention_mask: expected 0/1 integers or bools, got {attention_mask.dtype}"
        )
    real = attention_mask.bool()
    # Left padding: a row's real tokens end at the last column, so one cache position serves
    # every row while decoding.
    if not bool(real[:, -1].all()):
        raise ValueError(
            "attention_mask: expected left padding (every row's last column real); pad prompts "
            "on the left (tokenizer.encode_batch(..., padding_side='left'))"
        )
    return attention_mask.long()


# model class -> driver class; the first entry the model is an instance of wins.
DRIVERS: list[tuple[type[nn.Module], type]] = [(GPT, DecoderOnly), (EncoderDecoder, Seq2Seq)]


def driver_for(model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None):
    """The driver of ``model``'s family, with the model prepared (:func:`prepare`); TypeError for a
    model that does not generate."""
    for cls, driver in DRIVERS:
        if isinstance(model, cls):
            prepare(model)
            return driver(model, input_ids, attention_mask)
    names = ", ".join(cls.__name__ for cls, _ in DRIVERS)
    raise TypeError(f"model: expected a generative model ({names}), got {type(model).__name__}")


def prepare(model: nn.Module) -> nn.Module:
    """Get ``model`` ready to decode, in place; the values, shapes and tying of every weight stay
    as they are.

    * int4 layers that run PyTorch's CPU kernel pack their codes into its layout now, before
      a compiled step is traced, and keep them in that layout only (:meth:`Int4Linear.packed`);
      the memory this frees goes back to the system (measured on SmolLM2 int4, resident
      above the process's start: 271 MiB after a first generation, 223 once freed memory was
      handed back).
    * On the CPU, an fp32 ``nn.Linear`` with more outputs than inputs (N > K: a fused QKV
      projection, an MLP's up projection, the output head) stores its weight column-major
      (``weight.t().contiguous().t()``, the layout of Hugging Face's ``Conv1D``). A decode step
      multiplies one row per sequence, and PyTorch's CPU matrix-vector product of that shape
      reads such a weight half as fast again in this layout (measured, 2-core AVX2 EPYC, torch
      2.13, weights streamed from memory, GB/s read, row-major vs column-major: 2304x768 12.3
      vs 15.9, 3072x768 11.2 vs 16.0, 50257x768 10.6 vs 17.1, 1536x576 9.5 vs 12.8, 49152x576
      10.8 vs 17.7), while N < K is slower so (768x3072 16.3 vs 12.1, 192x576 8.4 vs 5.9), N = K
      the same, and a 512-row prefill the same either way. bf16 weights keep their layout (its
      column-major product is 17x slower). ``weight.contiguous()`` restores the usual layout;
      attnlab's own writers (checkpoints, Hugging Face export) store the values either way.
    """
    packed = False
    for module in model.modules():
        if isinstance(module, Int4Linear):
            if module.kernel_ready() and module._packed is None:
                module.packed()
                packed = True
        elif isinstance(module, nn.Linear):
            w = module.weight
            n, k = w.shape
            if w.device.type == "cpu" and w.dtype == torch.float32 and n > k and w.stride(0) != 1:
                w.data = w.data.t().contiguous().t()  # the same Parameter: tying is kept
    if packed:  # the codes' old copies and the packing's temporaries back to the system
        release_freed_memory()
    return model


_COMPILED: dict[tuple[Callable, str | None], Callable] = {}
RECOMPILE_LIMIT = 64  # models x batch shapes x cache sizes one process may decode with
# Models whose step failed to compile, per step kind and mode: they decode eagerly from then on
# (another model, say one without quantized layers, may still compile).
_FAILED: dict[tuple[Callable, str | None], weakref.WeakSet] = {}


def compiled(fn: Callable, mode: str | None) -> Callable:
    """``fn(model, ...)`` under ``torch.compile`` (one compiled function per step kind and
    mode, reused by every generation), or ``fn`` itself, with one warning, for a model whose
    step fails to compile. Call it once per generation: it trusts the guards of its first
    call for the calls that follow with the same model (whose shapes and state a generation
    keeps)."""
    key = (fn, mode)
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(fn, mode=mode, dynamic=False)
        _FAILED[key] = weakref.WeakSet()
    fast, failed = _COMPILED[key], _FAILED[key]
    checked: list[nn.Module] = []  # the model whose first step ran every guard

    def run(model, *args):
        if model in failed:
            return fn(model, *args)
        try:
            # One compiled step serves every model and batch shape of the process, and each
            # new one compiles again: past dynamo's default limit of 8 it would silently run
            # eagerly from then on. After a generation's first step, whose guards all ran,
            # the same model at the same shapes runs only the guards that tell its compiled
            # entries apart (evaluating them all took ~1.2 ms of a 20 ms GPT-2 int8 step).
            trusted = bool(checked) and checked[0] is model
            stance = torch.compiler.set_stance("default", skip_guard_eval_unsafe=trusted)
            with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT), stance:
                out = fast(model, *args)
            checked[:] = [model]
            return out
        except Exception as exc:  # a missing compiler, an unsupported operation, ...
            failed.add(model)
            warnings.warn(
                f"compile: torch.compile failed ({type(exc).__name__}: {str(exc)[:200]}); "
                "decoding eagerly",
                RuntimeWarning,
                stacklevel=3,
            )
            return fn(model, *args)

    return run

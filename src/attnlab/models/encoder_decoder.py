"""The original Transformer (Vaswani et al. 2017, "Attention Is All You Need"): an encoder over
the source and a decoder that attends causally to the target and fully to the encoded source.

As in the paper: sinusoidal positions added to embeddings scaled by sqrt(C) (§3.4, §3.5),
post-norm residual blocks (§3.1), ReLU feed-forward layers (§3.3), and optionally one embedding
matrix shared by source, target and output projection (§3.4, a shared vocabulary). ``prenorm``
switches to the pre-norm form, which trains deep stacks more stably.

Decoding keeps two caches per decoder block: the keys/values of the target so far (appended
each step), and the keys/values of the encoded source, computed on the first step and reused.

Shapes: B batch, S source tokens, T target tokens, C width, V vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from attnlab.attention import masks
from attnlab.attention.caches import Caches
from attnlab.attention.multihead import MultiHeadAttention
from attnlab.layers import MLP, Block, make_norm
from attnlab.models import presets
from attnlab.models.checks import check_choice, check_flags, check_numbers, check_sizes
from attnlab.models.heads import apply_layer_heads, attention_names, check_layer_heads
from attnlab.models.output import (
    ModelOutput,
    check_input_ids,
    classification_loss,
    key_padding_mask,
    run_blocks,
)
from attnlab.models.positions import PositionArgs, make_positions
from attnlab.models.variants import check_variants, self_attention
from attnlab.position import LearnedPositionalEmbedding

ACTIVATIONS = ("relu", "gelu", "gelu_tanh")


@dataclass
class TransformerConfig:
    vocab_size: int = 37000  # source vocabulary (also the target's when shared)
    tgt_vocab_size: int | None = None  # target vocabulary; None = vocab_size
    max_len: int = 1024  # decoding caches' default size; learned positions' table length
    n_layer: int = 6  # encoder blocks
    n_decoder_layer: int | None = None  # decoder blocks; None = n_layer
    n_head: int = 8  # attention heads
    dim: int = 512  # width C (d_model)
    hidden: int = 2048  # feed-forward width (d_ff)
    activation: str = "relu"  # feed-forward activation: "relu", "gelu" or "gelu_tanh"
    norm_eps: float = 1e-5  # LayerNorm epsilon
    dropout: float = 0.1  # embeddings, attention probabilities, residual branches (P_drop)
    prenorm: bool = False  # pre-norm blocks plus final norms instead of the paper's post-norm
    share_embeddings: bool = True  # one matrix for source and target embeddings (same vocab)
    tie_embeddings: bool = True  # output projection shares the target embedding matrix
    pad_id: int = 0  # padding token (labels shifted right are padded with it)
    bos_id: int = 1  # token that starts every target sequence
    eos_id: int = 2  # token that ends a target sequence
    backend: str = "auto"  # attention backend name
    layer_heads: dict[str, dict] | None = None  # pruned attention modules -> heads kept, kv heads
    position: str = "sinusoidal"  # none, learned, sinusoidal, rope, alibi or t5 (each stack)
    attention: str = "softmax"  # self-attention: softmax, local, linear or performer
    window: int | None = None  # local attention: the window of each query
    n_features: int | None = None  # performer: random features (None: D ln D)
    rank: int | None = None  # linformer (encoders only: refused here, the decoder is causal)
    score: str = "dot"  # softmax scoring: dot, general, cosine, euclidean or additive

    def __post_init__(self) -> None:
        check_sizes(self, "vocab_size", "max_len", "n_layer", "n_head", "dim", "hidden")
        check_sizes(self, "tgt_vocab_size", "n_decoder_layer")
        check_sizes(self, "pad_id", "bos_id", "eos_id", minimum=0)
        check_choice(self, "activation", ACTIVATIONS)
        check_numbers(self, "norm_eps")
        check_numbers(self, "dropout", high=1.0)
        check_flags(self, "prenorm", "share_embeddings", "tie_embeddings")
        if self.tgt_vocab_size is None:
            self.tgt_vocab_size = self.vocab_size
        if self.n_decoder_layer is None:
            self.n_decoder_layer = self.n_layer
        if self.share_embeddings and self.tgt_vocab_size != self.vocab_size:
            raise ValueError(
                f"tgt_vocab_size: share_embeddings needs one vocabulary of {self.vocab_size}, "
                f"got {self.tgt_vocab_size}"
            )
        if self.dim % self.n_head:
            raise ValueError(f"dim: expected a multiple of n_head={self.n_head}, got {self.dim}")
        for name in ("pad_id", "bos_id", "eos_id"):
            value = getattr(self, name)
            if not 0 <= value < self.tgt_vocab_size:
                raise ValueError(
                    f"{name}: expected a token id in [0, {self.tgt_vocab_size}), got {value}"
                )
        check_variants(self, causal=True, family="an encoder-decoder (its decoder is causal)")
        encoder = ("encoder.", self.n_layer, ["attn"])
        decoder = ("decoder.", self.n_decoder_layer, ["attn", "cross"])
        check_layer_heads(self, attention_names(encoder, decoder))

    @classmethod
    def from_preset(cls, name: str, **overrides) -> TransformerConfig:
        return presets.build(cls, PRESETS, name, overrides)


PRESETS: dict[str, dict] = {
    "transformer-base": {},  # the paper's base model: 6 + 6 layers, 512 wide, ~63M parameters
    "transformer-big": {"dim": 1024, "hidden": 4096, "n_head": 16, "dropout": 0.3},
}


class EncoderDecoder(nn.Module):
    """Sequence-to-sequence Transformer; ``EncoderDecoder.from_preset("transformer-base")``."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = c = config
        self.src_tok = nn.Embedding(c.vocab_size, c.dim)
        self.tgt_tok = self.src_tok if c.share_embeddings else nn.Embedding(c.tgt_vocab_size, c.dim)
        # Each stack has its own positions (T5: bidirectional buckets in the encoder, one-sided
        # in the decoder; learned: a table each). Token embeddings are scaled by sqrt(C).
        stacks = {
            causal: make_positions(
                c.position, PositionArgs(c.dim, c.dim // c.n_head, c.n_head, c.max_len, causal)
            )
            for causal in (False, True)
        }
        self.src_pos, self.tgt_pos = stacks[False].embedding, stacks[True].embedding
        self.drop = nn.Dropout(c.dropout)

        def block(cross: bool) -> Block:
            # The decoder's blocks (those with cross-attention) are causal. Cross-attention is
            # softmax without positions: they relate tokens of one sequence.
            return Block(
                self_attention(c, stacks[cross].attention, causal=cross),
                MLP(c.dim, c.hidden, activation=c.activation),
                lambda: make_norm("layernorm", c.dim, eps=c.norm_eps),
                prenorm=c.prenorm,
                dropout=c.dropout,
                cross=MultiHeadAttention(c.dim, c.n_head, dropout=c.dropout, backend=c.backend)
                if cross
                else None,
            )

        self.encoder = nn.ModuleList(block(False) for _ in range(c.n_layer))
        self.decoder = nn.ModuleList(block(True) for _ in range(c.n_decoder_layer))
        # Pre-norm stacks end un-normalised, so each gets a final norm; post-norm ones do not.
        self.enc_norm = make_norm("layernorm", c.dim, eps=c.norm_eps) if c.prenorm else None
        self.dec_norm = make_norm("layernorm", c.dim, eps=c.norm_eps) if c.prenorm else None
        self.head = nn.Linear(c.dim, c.tgt_vocab_size, bias=False)
        self.apply(_init)
        if c.tie_embeddings:
            self.head.weight = self.tgt_tok.weight
        apply_layer_heads(self)  # pruned layers: their own heads

    @classmethod
    def from_preset(cls, name: str, **overrides) -> EncoderDecoder:
        return cls(TransformerConfig.from_preset(name, **overrides))

    def _embed(
        self,
        table: nn.Embedding,
        pos: nn.Module | None,
        ids: Tensor,
        positions: Tensor | None = None,
    ) -> Tensor:
        x = table(ids) * math.sqrt(self.config.dim)
        if pos is None:  # relative positions (in attention) or none
            return self.drop(x)
        if positions is None:
            positions = torch.arange(ids.shape[1], device=ids.device)
        if isinstance(pos, LearnedPositionalEmbedding) and positions.numel():
            limit = self.config.max_len
            if not torch.compiler.is_compiling() and int(positions.max()) >= limit:
                raise ValueError(
                    f"input_ids: positions up to {int(positions.max())} exceed the learned "
                    f"positions' max_len={limit}"
                )
        return self.drop(x + pos(positions))

    def encode(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """The encoded source (B, S, C) for ``input_ids`` (B, S) with ``attention_mask`` (B, S),
        1 = real token."""
        return self._encode(input_ids, attention_mask)[0]

    def _encode(
        self, input_ids: Tensor, attention_mask: Tensor | None, output_attentions: bool = False
    ) -> tuple[Tensor, tuple[Tensor, ...] | None]:
        check_input_ids(input_ids)
        b, s = input_ids.shape
        stack = run_blocks(
            self.encoder,
            self._embed(self.src_tok, self.src_pos, input_ids),
            output_attentions=output_attentions,
            mask=key_padding_mask(attention_mask, b, s),
        )
        x = stack.x if self.enc_norm is None else self.enc_norm(stack.x)
        return x, stack.attentions

    def make_caches(
        self,
        batch: int,
        src_len: int,
        max_len: int | None = None,
        *,
        kind: str = "dynamic",
        **kwargs,
    ) -> Caches:
        """Decoding caches for ``batch`` sequences: target keys/values up to ``max_len`` tokens
        (default ``config.max_len``) in caches of ``kind`` ("dynamic", "static"; see
        :mod:`attnlab.attention.caches`), and source keys/values of ``src_len`` tokens."""
        n = max_len or self.config.max_len
        cross = {k: v for k, v in kwargs.items() if k in ("dtype", "device")}
        return Caches(
            [blk.attn.make_cache(batch, n, kind=kind, **kwargs) for blk in self.decoder],
            [blk.cross.make_cache(batch, src_len, **cross) for blk in self.decoder],
        )

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        *,
        decoder_input_ids: Tensor | None = None,
        decoder_attention_mask: Tensor | None = None,
        encoder_hidden: Tensor | None = None,
        caches: Caches | None = None,
        cache_positions: Tensor | None = None,
        labels: Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> ModelOutput:
        """Target logits (B, T, V): position t scores the token that follows target t.

        Args:
            input_ids: source token ids (B, S); attention_mask (B, S): 1 = real token.
            decoder_input_ids: target ids (B, T), starting with ``bos_id``; default ``labels``
                shifted right (teacher forcing).
            decoder_attention_mask: (B, cached + T), 1 = real target token.
            encoder_hidden: the output of :meth:`encode`, to skip re-encoding while decoding.
            caches: from :meth:`make_caches`; the decoder then continues from its length.
            cache_positions: with a static cache, the target positions of this call's tokens,
                (T,) or (B, T); default each row's next free position.
            labels: target ids (B, T) to predict, -100 (or ``pad_id`` after shifting) ignored.
        """
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("decoder_input_ids: expected target ids (or labels to shift)")
            decoder_input_ids = self.shift_right(labels)
        check_input_ids(decoder_input_ids)
        encoder_attentions = None
        if encoder_hidden is None:
            encoder_hidden, encoder_attentions = self._encode(
                input_ids, attention_mask, output_attentions
            )
        b, t = decoder_input_ids.shape
        self_caches = caches.layers if caches is not None else None
        if caches is not None and caches.slotted:
            if cache_positions is None:
                cache_positions = caches.next_positions(t)
            valid = None
            if decoder_attention_mask is not None:
                valid = decoder_attention_mask.bool()[:, -t:]
            self_caches = caches.bind(cache_positions, valid)
            self_mask, positions = None, cache_positions
        else:
            past = caches.length if caches is not None else 0
            positions = torch.arange(past, past + t, device=decoder_input_ids.device)
            self_mask = masks.causal()
            if decoder_attention_mask is not None:
                self_mask = self_mask & key_padding_mask(decoder_attention_mask, b, past + t)
        stack = run_blocks(
            self.decoder,
            self._embed(self.tgt_tok, self.tgt_pos, decoder_input_ids, positions),
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            caches=self_caches,
            cross_caches=caches.cross if caches is not None else None,
            mask=self_mask,
            positions=positions,
            context=encoder_hidden,
            context_mask=key_padding_mask(attention_mask, b, encoder_hidden.shape[1]),
        )
        x = stack.x if self.dec_norm is None else self.dec_norm(stack.x)
        logits = self.head(x)  # (B, T, V)
        return ModelOutput(
            logits,
            hidden_states=(*stack.hidden_states, x) if output_hidden_states else None,
            attentions=stack.attentions,
            loss=classification_loss(logits, labels) if labels is not None else None,
            cross_attentions=stack.cross_attentions,
            encoder_attentions=encoder_attentions,
        )

    def shift_right(self, labels: Tensor) -> Tensor:
        """Decoder inputs for teacher forcing: ``bos_id`` then labels[:, :-1] (-100 -> pad)."""
        start = labels.new_full((labels.shape[0], 1), self.config.bos_id)
        shifted = torch.cat([start, labels[:, :-1]], dim=1)
        return shifted.masked_fill(shifted == -100, self.config.pad_id)

    @torch.no_grad()
    def generate(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, max_new_tokens: int = 64
    ) -> Tensor:
        """Greedy decoding with both caches: target ids (B, <= max_new_tokens), without the
        leading ``bos_id``; rows that emit ``eos_id`` are padded with ``pad_id`` afterwards."""
        c = self.config
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: expected a positive int, got {max_new_tokens!r}")
        memory = self.encode(input_ids, attention_mask)
        b = input_ids.shape[0]
        weight = self.head.weight
        caches = self.make_caches(
            b, memory.shape[1], max_new_tokens, dtype=weight.dtype, device=weight.device
        )
        token = input_ids.new_full((b, 1), c.bos_id)
        done = torch.zeros(b, dtype=torch.bool, device=input_ids.device)
        out = []
        for _ in range(max_new_tokens):
            logits = self(
                input_ids,
                attention_mask,
                decoder_input_ids=token,
                encoder_hidden=memory,
                caches=caches,
            ).logits
            token = logits[:, -1].argmax(-1, keepdim=True)
            token = token.masked_fill(done[:, None], c.pad_id)
            out.append(token)
            done |= token[:, 0] == c.eos_id
            if bool(done.all()):
                break
        return torch.cat(out, dim=1)


def _init(module: nn.Module) -> None:
    # Xavier-uniform projections and N(0, C^-1/2) embeddings, so that embeddings scaled by
    # sqrt(C) have unit variance (the Transformer's usual initialisation).
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=module.embedding_dim**-0.5)

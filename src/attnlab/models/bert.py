"""BERT (Devlin et al. 2019): a bidirectional post-norm encoder with token types and a pooler.

Heads (all on one :class:`BERT`): masked-LM logits over the vocabulary (``mlm``), next-sentence
logits from the pooled [CLS] vector (``nsp``), both for pre-training (``pretrain``), ``classify``
(sequence classification from the pooled vector) and ``token`` (per-token classification);
:meth:`BERT.embed` gives mean-pooled sentence embeddings (sentence-transformers' MiniLM).

Shapes: B batch, T tokens, C width, V vocabulary, L labels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from attnlab.layers import MLP, Block, make_norm
from attnlab.models import presets
from attnlab.models.checks import check_flags, check_numbers, check_sizes
from attnlab.models.heads import apply_layer_heads, attention_names, check_layer_heads
from attnlab.models.output import (
    ModelOutput,
    StackOutput,
    check_input_ids,
    classification_loss,
    key_padding_mask,
    mean_pool,
    run_blocks,
)
from attnlab.models.positions import PositionArgs, make_positions
from attnlab.models.variants import check_variants, self_attention
from attnlab.names import unknown
from attnlab.position import LearnedPositionalEmbedding


@dataclass(frozen=True)
class Head:
    """A BERT head: the modules it adds and the logits it computes from the hidden states.

    Module names are fixed (``mlm_dense``, ``mlm_norm``, ``mlm_bias``, ``classifier``): the
    checkpoint maps name them."""

    build: Callable[[BERT, BertConfig], None]
    logits: Callable[[BERT, Tensor], tuple[Tensor, Tensor | None]]  # (logits, nsp logits)
    pooled: bool = False  # reads the pooled [CLS] vector (needs the pooler)
    loss: bool = True  # has labels to compute a loss against


def _mlm_modules(m: BERT, c: BertConfig) -> None:
    # Transform, then a decoder tied to the token embedding (with its own bias).
    m.mlm_dense = nn.Linear(c.dim, c.dim)
    m.mlm_norm = make_norm("layernorm", c.dim, eps=c.norm_eps)
    m.mlm_bias = nn.Parameter(torch.zeros(c.vocab_size))


def _mlm_logits(m: BERT, hidden: Tensor) -> Tensor:
    h = m.mlm_norm(nn.functional.gelu(m.mlm_dense(hidden)))
    return h @ m.tok.weight.t() + m.mlm_bias  # (B, T, V)


def _classifier(outputs: Callable[[BertConfig], int]) -> Callable[[BERT, BertConfig], None]:
    def build(m: BERT, c: BertConfig) -> None:
        m.classifier = nn.Linear(c.dim, outputs(c))

    return build


def _both(m: BERT, c: BertConfig) -> None:
    _mlm_modules(m, c)
    m.classifier = nn.Linear(c.dim, 2)


# name -> head; the config's ``head`` field picks one.
HEADS: dict[str, Head] = {
    "none": Head(lambda m, c: None, lambda m, h: (h, None), loss=False),
    "mlm": Head(_mlm_modules, lambda m, h: (_mlm_logits(m, h), None)),
    "nsp": Head(
        _classifier(lambda c: 2), lambda m, h: (m.classifier(m.drop(m.pool(h))), None), True
    ),  # (B, 2)
    "pretrain": Head(_both, lambda m, h: (_mlm_logits(m, h), m.classifier(m.pool(h))), True),
    "classify": Head(
        _classifier(lambda c: c.num_labels),
        lambda m, h: (m.classifier(m.drop(m.pool(h))), None),
        True,
    ),  # (B, L)
    "token": Head(
        _classifier(lambda c: c.num_labels), lambda m, h: (m.classifier(m.drop(h)), None)
    ),  # (B, T, L)
}


@dataclass
class BertConfig:
    vocab_size: int = 30522  # WordPiece vocabulary
    max_len: int = 512  # learned positions
    type_vocab_size: int = 2  # token types (segments A and B)
    n_layer: int = 12  # encoder blocks
    n_head: int = 12  # attention heads
    dim: int = 768  # width C
    hidden: int = 3072  # MLP width
    norm_eps: float = 1e-12  # LayerNorm epsilon
    dropout: float = 0.1  # embeddings, attention probabilities, residual branches
    head: str = "mlm"  # "none", "mlm", "nsp", "classify" or "token"
    num_labels: int = 2  # classes of the classify / token heads
    labels: list[str] | None = None  # class names, by label index (len num_labels); None: unnamed
    pooler: bool = True  # the [CLS] pooler (masked-LM-only checkpoints come without it)
    backend: str = "auto"  # attention backend name
    layer_heads: dict[str, dict] | None = None  # pruned attention modules -> heads kept, kv heads
    position: str = "learned"  # none, learned, sinusoidal, rope, alibi or t5
    attention: str = "softmax"  # softmax, local, linear, performer or linformer
    window: int | None = None  # local attention: keys less than this many positions away
    n_features: int | None = None  # performer: random features (None: D ln D)
    rank: int | None = None  # linformer: projected key/value rows (None: 64)
    score: str = "dot"  # softmax scoring: dot, general, cosine, euclidean or additive

    def __post_init__(self) -> None:
        check_sizes(self, "vocab_size", "max_len", "type_vocab_size", "n_layer", "n_head", "dim")
        check_sizes(self, "hidden", "num_labels")
        check_numbers(self, "norm_eps")
        check_numbers(self, "dropout", high=1.0)
        check_flags(self, "pooler")
        if self.head not in HEADS:
            raise unknown("head", "BERT head", self.head, HEADS)
        if HEADS[self.head].pooled and not self.pooler:
            raise ValueError(
                f"pooler: the {self.head!r} head reads the pooled vector; expected pooler=True"
            )
        if self.dim % self.n_head:
            raise ValueError(f"dim: expected a multiple of n_head={self.n_head}, got {self.dim}")
        if self.labels is not None:
            names = self.labels
            if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
                raise ValueError(f"labels: expected a list of str (class names), got {names!r}")
            self.labels = list(names)  # a tuple or a JSON list alike, compared as a list
            if len(set(self.labels)) != len(self.labels):
                raise ValueError(f"labels: expected distinct class names, got {self.labels}")
            if len(self.labels) != self.num_labels:
                raise ValueError(
                    f"labels: expected num_labels={self.num_labels} names (one per class), got "
                    f"{len(self.labels)}: {self.labels}"
                )
        check_variants(self, causal=False, family="BERT")
        check_layer_heads(self, attention_names(("", self.n_layer, ["attn"])))

    @classmethod
    def from_preset(cls, name: str, **overrides) -> BertConfig:
        return presets.build(cls, PRESETS, name, overrides)


PRESETS: dict[str, dict] = {
    "bert-base": {},  # 110M
    "minilm-l6": {"n_layer": 6, "dim": 384, "hidden": 1536, "head": "none"},  # all-MiniLM-L6-v2
}


class BERT(nn.Module):
    """The encoder plus the head named in the config."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = c = config
        self.tok = nn.Embedding(c.vocab_size, c.dim)
        head_dim = c.dim // c.n_head
        pos = make_positions(
            c.position,
            PositionArgs(c.dim, head_dim, c.n_head, c.max_len, causal=False, embedding_scale=0.02),
        )
        self.pos = pos.embedding  # an absolute table, or None (relative positions: in attention)
        self.seg = nn.Embedding(c.type_vocab_size, c.dim)
        self.emb_norm = make_norm("layernorm", c.dim, eps=c.norm_eps)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(
            Block(
                self_attention(c, pos.attention, causal=False),
                MLP(c.dim, c.hidden),
                lambda: make_norm("layernorm", c.dim, eps=c.norm_eps),
                prenorm=False,
                dropout=c.dropout,
            )
            for _ in range(c.n_layer)
        )
        self.pooler = nn.Linear(c.dim, c.dim) if c.pooler else None
        HEADS[c.head].build(self, c)
        self.apply(_init)
        apply_layer_heads(self)  # pruned layers: their own heads

    @classmethod
    def from_preset(cls, name: str, **overrides) -> BERT:
        return cls(BertConfig.from_preset(name, **overrides))

    def encode(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
    ) -> Tensor:
        """Final hidden states (B, T, C)."""
        return self._encode(input_ids, attention_mask, token_type_ids).x

    def _encode(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        *,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> StackOutput:
        check_input_ids(input_ids)
        b, t = input_ids.shape
        limited = (
            isinstance(self.pos, LearnedPositionalEmbedding) or self.config.attention == "linformer"
        )
        if t > self.config.max_len and limited:
            raise ValueError(f"input_ids: {t} tokens exceed max_len={self.config.max_len}")
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.tok(input_ids)
        if self.pos is not None:
            x = x + self.pos(torch.arange(t, device=input_ids.device))
        x = x + self.seg(token_type_ids)
        x = self.drop(self.emb_norm(x))
        return run_blocks(
            self.blocks,
            x,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            mask=key_padding_mask(attention_mask, b, t),
        )

    def pool(self, hidden: Tensor) -> Tensor:
        """tanh(W h_[CLS] + b): the pooled vector NSP and classification read."""
        return torch.tanh(self.pooler(hidden[:, 0]))

    def embed(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Mean of the final hidden states over real tokens (B, C): sentence embeddings."""
        return mean_pool(self.encode(input_ids, attention_mask), attention_mask)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        *,
        token_type_ids: Tensor | None = None,
        labels: Tensor | None = None,
        next_sentence_label: Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> ModelOutput:
        """Logits of the configured head for ``input_ids`` (B, T).

        Args:
            attention_mask: (B, T), 1 for real tokens and 0 for padding.
            token_type_ids: (B, T) segment ids (0 for sentence A, 1 for B); default all 0.
            labels: for the loss: token ids (B, T) with -100 where nothing is predicted (mlm),
                classes (B,) (nsp, classify) or (B, T) with -100 ignored (token).
            next_sentence_label: (B,) 0 = B follows A, 1 = B is random (head "pretrain", whose
                loss is the masked-LM loss plus the next-sentence loss; ``.logits`` are the
                masked-LM logits and ``.nsp_logits`` the next-sentence ones).
        """
        stack = self._encode(
            input_ids,
            attention_mask,
            token_type_ids,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        hidden = stack.x
        head = self.config.head
        logits, nsp_logits = HEADS[head].logits(self, hidden)
        loss = None
        if labels is not None:
            if not HEADS[head].loss:
                raise ValueError(f"labels: the model has no head (head={head!r}) to compute a loss")
            loss = classification_loss(logits, labels)
        if next_sentence_label is not None:
            if nsp_logits is None:
                raise ValueError(
                    f"next_sentence_label: expected head='pretrain', got head={head!r}"
                )
            nsp_loss = classification_loss(nsp_logits, next_sentence_label)
            loss = nsp_loss if loss is None else loss + nsp_loss
        return ModelOutput(
            logits,
            hidden_states=(*stack.hidden_states, hidden) if output_hidden_states else None,
            attentions=stack.attentions,
            loss=loss,
            nsp_logits=nsp_logits,
        )


def _init(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)

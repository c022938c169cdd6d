"""Multi-turn chat: the chat template renders the conversation, the cache keeps earlier turns.

Each turn renders the whole conversation with the tokenizer's chat template (as transformers
does), encodes it, and compares it with the tokens the static cache already holds: only the
part after the longest common prefix is encoded, so a turn costs its own tokens, not the whole
history's. When the conversation no longer fits the context, its oldest turns (after a system
message) are dropped and the cache is rebuilt.

    chat = Conversation(model, tokenizer, system="You are terse.", temperature=0)
    for piece in chat.send("Hello!"):
        print(piece, end="")
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from attnlab.generate.engine import check_count, stream


def common_prefix(a: list[int], b: list[int]) -> int:
    """The length of the longest common prefix of two id lists."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class Conversation:
    """A chat with a decoder-only ``model`` through ``tokenizer``'s chat template.

    Args:
        system: an optional system message, kept when old turns are dropped.
        max_new_tokens: the longest reply.
        max_len: positions of the cache (default the model's context).
        cache_dtype: the cache's dtype (default the weights').
        sampling: temperature, top_k, top_p, min_p, repetition_penalty, seed, compile, as for
            :func:`attnlab.generate.stream`.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        *,
        system: str | None = None,
        max_new_tokens: int = 256,
        max_len: int | None = None,
        cache_dtype: torch.dtype | None = None,
        **sampling,
    ) -> None:
        if tokenizer is None or tokenizer.chat_template is None:
            raise ValueError(
                "tokenizer: expected one with a chat template (tokenizer_config.json's "
                "chat_template, chat_template.jinja or GGUF tokenizer.chat_template), got none"
            )
        self.model, self.tokenizer = model, tokenizer
        self.max_new_tokens = check_count(max_new_tokens, "max_new_tokens", 1)
        self.max_len = max_len or model.config.max_len
        if self.max_len <= self.max_new_tokens:
            raise ValueError(
                f"max_new_tokens: expected fewer than the context of {self.max_len}, got "
                f"{max_new_tokens}"
            )
        self.system = system
        self.messages: list[dict[str, str]] = []
        self.sampling = sampling
        weight = next(model.parameters())
        self.caches = model.make_caches(
            1, self.max_len, kind="static", dtype=cache_dtype or weight.dtype, check_values=False
        )
        self.cached: list[int] = []  # the ids whose keys and values the cache holds
        self.reused = 0  # positions of the cache the last turn reused
        self.end_ids = [tokenizer.eos_id] if tokenizer.eos_id is not None else []

    def _render(self) -> list[int]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        text = self.tokenizer.apply_chat_template(head + self.messages, add_generation_prompt=True)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _fit(self) -> list[int]:
        """The rendered conversation's ids, dropping the oldest turns until a reply fits."""
        before = list(self.messages)
        while True:
            ids = self._render()
            if len(ids) + self.max_new_tokens <= self.max_len:
                return ids
            if len(self.messages) <= 1:
                self.messages = before[:-1]  # the conversation as it was, without the message
                raise ValueError(
                    f"message: {len(ids)} tokens with the template leave no room for a reply "
                    f"of {self.max_new_tokens} tokens in the context of {self.max_len}"
                )
            # The oldest exchange goes (a user message and the reply to it).
            del self.messages[: 2 if len(self.messages) > 2 else 1]

    def send(self, text: str) -> Iterator[str]:
        """Add a user message and stream the reply's text as it is generated; the reply joins
        the conversation when the iterator is exhausted."""
        if not isinstance(text, str):
            raise TypeError(f"text: expected a str, got {type(text).__name__}")
        self.messages.append({"role": "user", "content": text})
        ids = self._fit()
        reuse = min(common_prefix(self.cached, ids), len(ids) - 1)
        self.reused = reuse
        decoder = self.tokenizer.decoder()
        reply: list[int] = []
        ended = False
        for token in stream(
            self.model,
            torch.tensor([ids], device=self.caches.layers[0].k.device),
            self.max_new_tokens,
            eos_id=self.end_ids or None,
            caches=self.caches,
            reuse=reuse,
            **self.sampling,
        ):
            tid = int(token)
            if tid in self.end_ids:
                ended = True
                break
            reply.append(tid)
            piece = decoder.push(tid)
            if piece:
                yield piece
        rest = decoder.flush()
        if rest:
            yield rest
        # The last token sampled was not fed to the model unless an end token followed it.
        self.cached = ids + (reply if ended else reply[:-1])
        self.messages.append({"role": "assistant", "content": self.tokenizer.decode(reply)})

    def reset(self) -> None:
        """Forget the conversation (the system message stays)."""
        self.messages.clear()
        self.cached = []

"""Generation: prefill and decode steps over a static KV cache, sampling, beam search,
speculative decoding and chat.

``generate(model, input_ids, max_new_tokens, ...)`` returns ids; ``stream(...)`` yields each
step's tokens as they are chosen. Both serve decoder-only models and the encoder-decoder.
"""

from attnlab.generate.engine import fit_prompt, generate, prompt_overflow, stream
from attnlab.generate.sampling import Sampling, choose, filter_logits, next_token

__all__ = [
    "Sampling",
    "choose",
    "filter_logits",
    "fit_prompt",
    "generate",
    "next_token",
    "prompt_overflow",
    "stream",
]

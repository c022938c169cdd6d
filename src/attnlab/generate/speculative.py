"""Speculative decoding: a small draft model proposes, the target model verifies in one call.

Each round the draft model proposes ``k`` tokens one at a time; the target model scores the
last accepted token and all ``k`` proposals in one forward pass (k + 1 positions, about the
cost of one decode step when decoding is bound by reading the weights). Proposal i is accepted
with probability min(1, p(x) / q(x)) (p the target's distribution, q the draft's); at the first
rejection a token is drawn from max(0, p - q), renormalised; when all k pass, one more token
comes from the target's last distribution. The output is distributed exactly as the target
model's own samples (Leviathan et al. 2023, Chen et al. 2023). Greedy (temperature 0) accepts a
proposal iff it is the target's argmax, so the tokens equal the target's greedy tokens.

Both models keep static caches; rejected positions are rolled back with ``truncate``.

Shapes: T prompt tokens, k proposals per round, V vocabulary; one row (B = 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from attnlab.generate.drivers import DecoderOnly, driver_for
from attnlab.generate.engine import check_count, eos_ids
from attnlab.generate.packing import packed_linears
from attnlab.generate.sampling import Sampling, filter_logits

_SAMPLING = ("temperature", "top_k", "top_p", "min_p")


@dataclass
class SpeculativeStats:
    """What a run of speculative decoding did."""

    rounds: int = 0  # target forward passes after the prompt
    drafted: int = 0  # tokens the draft model proposed
    accepted: int = 0  # proposals the target accepted

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_round(self) -> float:
        """New tokens per target forward pass (1 without a draft model)."""
        return (self.accepted + self.rounds) / self.rounds if self.rounds else 0.0


def _probs(logits: Tensor, sampling: Sampling) -> Tensor:
    """The distribution (..., V) the sampler draws from for ``logits`` (..., V)."""
    logits = logits.float() / sampling.temperature
    if sampling.filters:
        flat = filter_logits(
            logits.reshape(-1, logits.shape[-1]), sampling.top_k, sampling.top_p, sampling.min_p
        )
        logits = flat.view(logits.shape)
    return logits.softmax(-1)


@torch.no_grad()
def speculative(
    model: nn.Module,
    draft_model: nn.Module,
    input_ids: Tensor,
    max_new_tokens: int,
    *,
    attention_mask: Tensor | None = None,
    num_draft: int = 4,
    eos_id: int | list[int] | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    cache_dtype: torch.dtype | None = None,
    return_stats: bool = False,
    **options,
) -> Tensor | tuple[Tensor, SpeculativeStats]:
    """The prompt followed by up to ``max_new_tokens`` tokens (1, T + n) of ``model``, drafted
    by ``draft_model`` ``num_draft`` tokens at a time; with ``return_stats=True`` also a
    :class:`SpeculativeStats`. Sampling options (temperature, top_k, top_p, min_p) as for
    :func:`attnlab.generate.stream`."""
    unknown = sorted(set(options) - set(_SAMPLING))
    if unknown:
        raise ValueError(f"draft_model: speculative decoding does not support {', '.join(unknown)}")
    sampling = Sampling(**options)
    check_count(max_new_tokens, "max_new_tokens", 1)
    k = check_count(num_draft, "num_draft", 1)
    eos = eos_ids(eos_id)
    if seed is not None:
        generator = torch.Generator(device=input_ids.device).manual_seed(seed)
    target = driver_for(model, input_ids, attention_mask)
    draft = driver_for(draft_model, input_ids, attention_mask)
    if not isinstance(target, DecoderOnly) or not isinstance(draft, DecoderOnly):
        raise TypeError("draft_model: speculative decoding needs two decoder-only models")
    if target.vocab != draft.vocab:
        raise ValueError(
            f"draft_model: expected the target's vocabulary of {target.vocab} tokens, got "
            f"{draft.vocab}"
        )
    if input_ids.shape[0] != 1:
        raise ValueError(
            f"input_ids: speculative decoding runs one prompt at a time, got {input_ids.shape[0]}"
        )
    ids, mask = target.prompt, target.prompt_mask
    t = ids.shape[1]
    size = t + max_new_tokens + k + 1
    context = min(target.context, draft.context)
    if size > context:
        raise ValueError(
            f"max_new_tokens: the prompt ({t}) + {max_new_tokens} new tokens + {k + 1} for "
            f"drafting exceed the context of {context}"
        )
    model.eval()
    draft_model.eval()

    def caches(driver: DecoderOnly):
        weight = next(driver.model.parameters())
        return driver.make_caches(
            1, size, kind="static", dtype=cache_dtype or weight.dtype, device=ids.device
        )

    # The target scores k + 1 rows at once: faster through packed weights.
    with packed_linears(model, k + 1):
        t_caches, d_caches = caches(target), caches(draft)
        logits, _ = target.prefill(ids, mask, t_caches)
        draft.prefill(ids, mask, d_caches)
        stats = SpeculativeStats()
        start = int(mask.sum())  # model position of the next token (real tokens so far)

        def pick(p_logits: Tensor) -> Tensor:
            if sampling.greedy:
                return p_logits.argmax(-1, keepdim=True)
            return torch.multinomial(_probs(p_logits, sampling), 1, generator=generator)

        out = [pick(logits)]  # (1, 1) each
        n = t  # cache position of the last token (out[-1]), not yet in either cache
        pos = start
        while len(out) < max_new_tokens and not (eos and int(out[-1]) in eos):
            last = out[-1]
            # The draft proposes k tokens, one step each.
            proposals, q_logits = [], []
            token = last
            for i in range(k):
                q = draft.step(
                    token,
                    torch.tensor([[pos + i]], device=ids.device),
                    torch.tensor([n + i], device=ids.device),
                    d_caches,
                )
                q_logits.append(q)
                token = pick(q)
                proposals.append(token)
            # The target scores the last token and every proposal at once: (1, k + 1, V).
            block = torch.cat([last, *proposals], dim=1)
            p_logits = model(
                block,
                caches=t_caches,
                positions=torch.arange(pos, pos + k + 1, device=ids.device)[None],
                cache_positions=torch.arange(n, n + k + 1, device=ids.device),
            ).logits[0]
            stats.rounds += 1
            stats.drafted += k
            drafted = torch.cat(proposals, dim=1)[0]  # (k,)
            accepted = _accept(drafted, p_logits[:k], torch.cat(q_logits, 0), sampling, generator)
            stats.accepted += accepted
            new = [drafted[i].view(1, 1) for i in range(accepted)]
            if accepted < k:  # the first rejected position gets a correction
                new.append(_correct(p_logits[accepted], q_logits[accepted][0], sampling, generator))
            else:  # every proposal passed: one more token from the target, and the draft catches up
                new.append(pick(p_logits[k][None]))
                draft.step(
                    proposals[-1],
                    torch.tensor([[pos + k]], device=ids.device),
                    torch.tensor([n + k], device=ids.device),
                    d_caches,
                )
            # Keep the last token and the accepted proposals; forget the rest.
            t_caches.truncate(n + 1 + accepted)
            d_caches.truncate(n + 1 + accepted)
            n += 1 + accepted
            pos += 1 + accepted
            for token in new:
                out.append(token)
                if len(out) == max_new_tokens or (eos and int(token) in eos):
                    break
    result = torch.cat([ids, *out], dim=1)
    return (result, stats) if return_stats else result


def _accept(drafted, p_logits, q_logits, sampling, generator) -> int:
    """How many of the ``drafted`` (k,) tokens the target accepts, given its logits (k, V) and
    the draft's (k, V) at the same positions."""
    if sampling.greedy:
        agree = (p_logits.argmax(-1) == drafted).long()
    else:
        p = _probs(p_logits, sampling).gather(-1, drafted[:, None])[:, 0]
        q = _probs(q_logits, sampling).gather(-1, drafted[:, None])[:, 0]
        u = torch.rand(drafted.shape, generator=generator, device=drafted.device)
        agree = (u * q <= p).long()  # accept with probability min(1, p / q)
    return int(agree.cumprod(0).sum())  # the accepted prefix


def _correct(p_logits, q_logits, sampling, generator) -> Tensor:
    """The token (1, 1) at the first rejected position: argmax of p (greedy), else a draw from
    max(0, p - q) renormalised."""
    if sampling.greedy:
        return p_logits.argmax(-1).view(1, 1)
    residual = (_probs(p_logits, sampling) - _probs(q_logits, sampling)).clamp(min=0)
    if float(residual.sum()) <= 0:  # p == q up to rounding: p itself
        residual = _probs(p_logits, sampling)
    return torch.multinomial(residual / residual.sum(), 1, generator=generator).view(1, 1)

"""Beam search with a length penalty and early stopping (the rules of transformers' generate).

Each row keeps ``num_beams`` running hypotheses. A step scores every continuation of every beam
(the beam's summed log-probability plus the token's), keeps the best ``2 K`` (more with several
EOS ids, so that K beams survive whatever ends), and:

* a candidate ending in EOS, or reaching ``max_new_tokens``, among the best K, is finished
  with score ``sum of log-probabilities / generated_length ** length_penalty`` and competes for
  the row's K finished slots;
* the best K candidates that did not finish run on (the caches follow them: ``reorder``).

A row is done when its K finished slots are full and (``early_stopping=False``) the best running
beam's score at the current length cannot beat the worst finished one; ``early_stopping=True``
stops as soon as every row has K finished hypotheses; ``"never"`` with a positive length
penalty compares against the longest possible length instead (the canonical algorithm). The
result is each row's best finished hypothesis.

Shapes: B rows, K beams, V vocabulary, n new tokens, T prompt tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.generate.drivers import driver_for
from attnlab.generate.engine import check_count, eos_ids
from attnlab.generate.packing import packed_linears

_NEG = -1.0e9  # the score of a slot that must never win

# Options of sampling: beam search chooses by score, so none of them applies.
_SAMPLING = ("temperature", "top_k", "top_p", "min_p", "generator", "seed", "stop")


def _gather(x: Tensor, index: Tensor) -> Tensor:
    """x (B, N, ...) at beams ``index`` (B, M) -> (B, M, ...)."""
    expanded = index.reshape(*index.shape, *([1] * (x.dim() - 2))).expand(
        *index.shape, *x.shape[2:]
    )
    return x.gather(1, expanded)


@torch.no_grad()
def beam_search(
    model: nn.Module,
    input_ids: Tensor,
    max_new_tokens: int,
    *,
    attention_mask: Tensor | None = None,
    num_beams: int = 4,
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
    eos_id: int | list[int] | None = None,
    pad_id: int | None = None,
    vocab_size: int | None = None,
    truncate: bool = False,
    cache: str = "static",
    cache_dtype: torch.dtype | None = None,
    compile: bool = False,
    compile_mode: str | None = None,
    return_scores: bool = False,
    **options,
) -> Tensor | tuple[Tensor, Tensor]:
    """The best beam of each row: ids as :func:`attnlab.generate.generate` returns them
    (decoder-only: prompt + new tokens; encoder-decoder: ``bos_id`` + new tokens), padded with
    ``pad_id`` to the longest row; with ``return_scores=True`` also each row's score (B,)
    (summed log-probability over generated_length ** length_penalty)."""
    if options.get("temperature") == 0:  # greedy: what beam search is with one beam
        del options["temperature"]
    given = sorted(set(options) & set(_SAMPLING))
    if given:
        raise ValueError(
            f"num_beams: beam search keeps the likeliest beams and takes no sampling option; "
            f"got {', '.join(given)} (use num_beams=1 to sample)"
        )
    if options:
        raise TypeError(f"beam_search: unexpected arguments {', '.join(sorted(options))}")
    check_count(max_new_tokens, "max_new_tokens", 1)
    k = check_count(num_beams, "num_beams", 1)
    if early_stopping not in (True, False, "never"):
        raise ValueError(f"early_stopping: expected True, False or 'never', got {early_stopping!r}")
    if not isinstance(length_penalty, int | float) or isinstance(length_penalty, bool):
        raise ValueError(f"length_penalty: expected a float, got {length_penalty!r}")
    eos = eos_ids(eos_id)
    pad = pad_id if pad_id is not None else (eos[0] if eos else 0)
    model.eval()

    probe = driver_for(model, input_ids, attention_mask)
    if probe.seq2seq:
        if max_new_tokens >= probe.context:
            raise ValueError(
                f"max_new_tokens: expected fewer than the decoder's context of {probe.context}, "
                f"got {max_new_tokens}"
            )
        source, source_mask = input_ids, attention_mask
        prompt = probe.prompt
    else:
        room = probe.context - max_new_tokens  # beam search does not slide its window
        if room < 1:
            raise ValueError(
                f"max_new_tokens: expected fewer than the context of {probe.context}, got "
                f"{max_new_tokens}"
            )
        if probe.prompt.shape[1] > room and not truncate:
            raise ValueError(
                f"prompt: {probe.prompt.shape[1]} tokens and {max_new_tokens} new ones exceed "
                f"the context of {probe.context}; shorten it or pass truncate=True to keep its end"
            )
        prompt = probe.prompt[:, -room:]
        source, source_mask = prompt, probe.prompt_mask[:, -room:]
    b, t = prompt.shape
    # Every row's prompt, K times (row r's beams are rows r K .. r K + K - 1).
    flat = source.repeat_interleave(k, 0)
    flat_mask = source_mask.repeat_interleave(k, 0) if source_mask is not None else None
    driver = driver_for(model, flat, flat_mask)
    ids, mask = driver.prompt, driver.prompt_mask
    weight = next(model.parameters())
    caches = driver.make_caches(
        b * k, t + max_new_tokens, kind=cache, dtype=cache_dtype or weight.dtype, device=ids.device
    )
    if cache == "dynamic":
        raise ValueError("cache: beam search reorders its caches; use cache='static'")
    step = driver.compiled_step(compile_mode) if compile else driver.step
    with packed_linears(model, b * k):  # the beams multiply each weight together
        logits, positions = driver.prefill(ids, mask, caches)

        device, n = ids.device, max_new_tokens
        wide = max(2, 1 + len(eos)) * k  # candidates kept per step
        top_k_mask = torch.arange(wide, device=device) < k  # (wide,): the best K of them
        eos_t = torch.tensor(eos, dtype=torch.long, device=device)
        offsets = torch.arange(b, device=device)[:, None] * k  # (B, 1): row r's first beam
        run_seq = torch.full((b, k, n), pad, dtype=torch.long, device=device)
        run_score = torch.zeros(b, k, device=device)
        run_score[:, 1:] = _NEG  # the beams start identical: only the first may expand at first
        fin_seq = run_seq.clone()
        fin_score = torch.full((b, k), _NEG, device=device)
        fin_len = torch.zeros(b, k, dtype=torch.long, device=device)
        fin_done = torch.zeros(b, k, dtype=torch.bool, device=device)
        open_rows = torch.ones(b, 1, dtype=torch.bool, device=device)  # improvement still possible

        for i in range(n):
            logp = F.log_softmax(logits.float(), dim=-1)  # (B K, V)
            if vocab_size is not None and vocab_size < logp.shape[-1]:
                logp[:, vocab_size:] = float("-inf")
            v = logp.shape[-1]
            total = (logp.view(b, k, v) + run_score[:, :, None]).view(b, k * v)  # (B, K V)
            top_score, top_index = torch.topk(total, wide)  # (B, wide)
            source_beam, token = top_index // v, top_index % v
            cand = _gather(run_seq, source_beam)  # (B, wide, n)
            cand[:, :, i] = token
            hits = torch.isin(token, eos_t) if eos else torch.zeros_like(token, dtype=torch.bool)
            if i == n - 1:
                hits = torch.ones_like(hits)  # the length limit ends every candidate

            # The best K candidates that go on.
            running = top_score + _NEG * hits.float()
            nxt = torch.topk(running, k).indices  # (B, K)
            run_seq, run_score = _gather(cand, nxt), _gather(running, nxt)
            beam_from = _gather(source_beam, nxt)  # (B, K)

            # Candidates among the best K that finished compete for the finished slots.
            finished = hits & top_k_mask
            score = top_score / float(i + 1) ** length_penalty
            full = fin_done.all(-1, keepdim=True) & (early_stopping is True)
            score = score + _NEG * (full | ~open_rows | ~finished).float()
            merged = torch.topk(torch.cat([fin_score, score], 1), k).indices  # (B, K)
            fin_seq = _gather(torch.cat([fin_seq, cand], 1), merged)
            fin_score = _gather(torch.cat([fin_score, score], 1), merged)
            fin_done = _gather(torch.cat([fin_done, finished], 1), merged)
            length = torch.full_like(hits, i + 1, dtype=torch.long)
            fin_len = _gather(torch.cat([fin_len, length], 1), merged)

            # Stop when no row can improve, or (early_stopping=True) every row is full, or every
            # candidate has finished.
            best_len = n if early_stopping == "never" and length_penalty > 0 else i + 1
            best_possible = run_score[:, :1] / float(best_len) ** length_penalty  # (B, 1)
            worst = torch.where(fin_done, fin_score.amin(-1, keepdim=True), _NEG)
            open_rows = open_rows & (best_possible > worst).any(-1, keepdim=True)
            every_full = bool(fin_done.all()) and early_stopping is True
            if i == n - 1 or not bool(open_rows.any()) or every_full or bool(hits.all()):
                break

            caches.reorder((beam_from + offsets).flatten())  # (B K,): each beam's source row
            if driver.seq2seq:
                driver.reorder((beam_from + offsets).flatten())
            positions = positions.view(b, k, 1).gather(1, beam_from[..., None]).view(b * k, 1)
            token = run_seq[:, :, i].reshape(b * k, 1)
            cache_pos = torch.full((1,), t + i, dtype=torch.long, device=device)
            logits = step(token, positions, cache_pos, caches)
            positions = positions + 1

        best = fin_seq[:, 0, : int(fin_len[:, 0].max())]  # (B, longest best beam)
        out = torch.cat([prompt, best], dim=1)
        return (out, fin_score[:, 0]) if return_scores else out

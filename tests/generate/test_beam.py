"""Beam search returns the sequences and scores of transformers' generate(num_beams=...)."""

from __future__ import annotations

import pytest
import torch
from generate_helpers import left_padded, pair

from attnlab.generate import generate
from attnlab.generate.beam import beam_search
from attnlab.models import EncoderDecoder, TransformerConfig

SETTINGS = [(1.0, False), (2.0, True), (0.5, "never"), (-1.0, False), (1.5, "never")]


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def models(request, tmp_path_factory):
    hf, ours = pair(request.param, tmp_path_factory.mktemp("beam"))
    # An end token the random model actually produces a few steps in, so that beams finish
    # before the length limit (besides 1, which it rarely picks).
    greedy = generate(ours, torch.tensor([[8, 3, 40]]), 4, temperature=0)
    return hf, ours, [1, int(greedy[0, -1])]


@pytest.mark.parametrize(("length_penalty", "early_stopping"), SETTINGS)
def test_beams_equal_transformers(models, length_penalty, early_stopping):
    hf, ours, eos = models
    ids, mask = left_padded([[5, 9, 13, 7, 22], [8, 3, 40], [11]])
    want = hf.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=12,
        num_beams=4,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
        do_sample=False,
        eos_token_id=eos,
        pad_token_id=2,
        output_scores=True,
        return_dict_in_generate=True,
    )
    got, scores = beam_search(
        ours,
        ids,
        12,
        attention_mask=mask,
        num_beams=4,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
        eos_id=eos,
        pad_id=2,
        return_scores=True,
    )
    assert torch.equal(got, want.sequences)
    torch.testing.assert_close(scores, want.sequences_scores, atol=1e-4, rtol=1e-5)


def test_some_beam_ends_before_the_limit(models):
    """The settings above exercise finished hypotheses, not only the length limit."""
    _, ours, eos = models
    ids, mask = left_padded([[5, 9, 13, 7, 22], [8, 3, 40], [11]])
    got = beam_search(ours, ids, 12, attention_mask=mask, eos_id=eos, pad_id=2)
    new = got[:, ids.shape[1] :]
    assert bool(torch.isin(new, torch.tensor(eos)).any())


def test_one_beam_is_greedy(models):
    ours = models[1]
    ids, mask = left_padded([[5, 9, 13], [8]])
    greedy = generate(ours, ids, 6, attention_mask=mask, temperature=0)
    assert torch.equal(beam_search(ours, ids, 6, attention_mask=mask, num_beams=1), greedy)


def test_generate_dispatches_to_beams(models):
    ours = models[1]
    ids = torch.tensor([[5, 9, 13]])
    assert torch.equal(generate(ours, ids, 5, num_beams=3), beam_search(ours, ids, 5, num_beams=3))


def test_encoder_decoder_beams_match_a_full_search_without_caches():
    """The encoder-decoder's beams (source encoded once, caches reordered) equal a beam search
    that recomputes every beam from scratch with the uncached model."""
    torch.manual_seed(0)
    c = TransformerConfig(
        vocab_size=40, dim=32, n_head=4, hidden=64, n_layer=2, n_decoder_layer=2, max_len=32
    )
    model = EncoderDecoder(c).eval()
    src = torch.randint(3, 40, (2, 7))
    got, scores = beam_search(model, src, 6, num_beams=3, eos_id=c.eos_id, return_scores=True)
    want, want_scores = _uncached_beams(model, src, 6, 3, c.eos_id)
    assert torch.equal(got, want)
    torch.testing.assert_close(scores, want_scores)


@torch.no_grad()
def _uncached_beams(model, src, n, k, eos):
    """Textbook beam search (length penalty 1, early_stopping=False's stopping rule replaced by
    running to the limit) recomputing the decoder over whole prefixes."""
    outs, scores = [], []
    for row in src:
        beams = [([model.config.bos_id], 0.0)]
        finished = []
        for i in range(n):
            cands = []
            for seq, s in beams:
                dec = torch.tensor([seq])
                logits = model(row[None], decoder_input_ids=dec).logits[0, -1]
                logp = torch.log_softmax(logits.float(), -1)
                top = torch.topk(logp, 2 * k)
                cands += [
                    ([*seq, int(t)], s + float(v))
                    for v, t in zip(top.values, top.indices, strict=True)
                ]
            cands.sort(key=lambda c: -c[1])
            cands = cands[: 2 * k]
            beams = []
            for rank, (seq, s) in enumerate(cands):
                if seq[-1] == eos or i == n - 1:
                    if rank < k:
                        finished.append((seq, s / (len(seq) - 1)))
                elif len(beams) < k:
                    beams.append((seq, s))
            finished = sorted(finished, key=lambda f: -f[1])[:k]
        outs.append(finished[0][0])
        scores.append(finished[0][1])
    width = max(map(len, outs))
    pad = model.config.eos_id
    ids = torch.tensor([o + [pad] * (width - len(o)) for o in outs])
    return ids, torch.tensor(scores)


def test_temperature_zero_is_greedy_and_agrees_with_beams(models):
    ours = models[1]
    ids = torch.tensor([[5, 9, 3]])
    want = generate(ours, ids, 6, num_beams=3)
    assert torch.equal(generate(ours, ids, 6, num_beams=3, temperature=0), want)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temperature": 0.7}, "num_beams: .*temperature"),
        ({"top_p": 0.9}, "num_beams: .*top_p"),
        ({"early_stopping": "sometimes"}, "early_stopping"),
        ({"num_beams": 0}, "num_beams"),
    ],
)
def test_bad_options_are_refused(models, kwargs, match):
    ours = models[1]
    options = {"num_beams": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        generate(ours, torch.tensor([[5, 9]]), 4, **options)

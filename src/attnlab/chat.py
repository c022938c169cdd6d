"""Chat templates: a conversation rendered into the prompt text a chat model was trained on.

A chat template is a Jinja program shipped with the tokenizer (``tokenizer_config.json``'s
``chat_template``, a ``chat_template.jinja`` file, or a GGUF file's ``tokenizer.chat_template``).
:func:`render` runs it in the environment Hugging Face transformers gives templates, so a
template renders here exactly as ``apply_chat_template(..., tokenize=False)`` renders it there:

* a sandbox whose objects cannot be modified (templates are untrusted code from the Hub), with
  ``trim_blocks`` and ``lstrip_blocks`` on and the ``loopcontrols`` extension (``break``,
  ``continue``);
* the variables ``messages``, ``add_generation_prompt``, ``tools`` and ``documents`` (None when
  not given), the tokenizer's special tokens (``bos_token``, ``eos_token``, ...) and any extra
  variables the caller passes;
* the globals ``raise_exception(message)``, ``strftime_now(format)``, ``dict`` and a
  ``namespace`` that refuses underscore-prefixed names, and a ``tojson`` filter that writes
  non-ASCII text as is and accepts ``indent``, ``separators`` and ``sort_keys``;
* ``{% generation %} ... {% endgeneration %}`` blocks (which mark the assistant's text for
  training masks) render their body unchanged.

Everything the template sees is first rebuilt from plain JSON-like values (str, int, float,
bool, None, dicts, lists, tuples), so objects with methods never reach the sandbox.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
import numpy as np
from jinja2.sandbox import ImmutableSandboxedEnvironment

__all__ = ["render"]

# Names a message's reasoning is passed under; templates read the first, some read "thinking".
REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


class _Refused(jinja2.TemplateError):
    """Raised by the template's own ``raise_exception(message)``."""


def _raise_exception(message: str):
    raise _Refused(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    # Jinja's own ``tojson`` escapes <, >, & and ' for HTML and takes only ``indent``; chat
    # templates expect plain JSON with the text as is.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


class _Dict:
    """``dict(...)`` and ``dict.fromkeys(...)`` for templates, without the type itself (whose
    attributes would reach past the sandbox)."""

    def __call__(self, *args, **kwargs) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs) -> dict:
        return dict.fromkeys(*args, **kwargs)


class _Namespace(jinja2.utils.Namespace):
    """Jinja's ``namespace()``, refusing attribute names that start with an underscore, which
    could otherwise shadow the object's internals."""

    def __init__(*args, **kwargs) -> None:  # Jinja's signature: ``self`` may be a key
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value) -> None:
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"namespace: attribute names may not start with an underscore, got {name!r}"
            )


class _Generation(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}``: renders its body unchanged."""

    tags = {"generation"}  # noqa: RUF012 (Jinja reads the class attribute)

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller) -> str:
        return caller()


@functools.cache
def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _Dict()
    env.globals["namespace"] = _Namespace
    return env


@functools.lru_cache(maxsize=32)
def _compile(template: str) -> jinja2.Template:
    """The compiled template (cached: a tokenizer renders its one template many times)."""
    try:
        return _environment().from_string(template)
    except jinja2.TemplateSyntaxError as exc:
        raise ValueError(
            f"chat_template: expected a Jinja template, got a syntax error on line {exc.lineno}: "
            f"{exc.message}"
        ) from None


def _plain(value: Any) -> Any:
    """``value`` rebuilt from plain JSON-like values; anything else becomes ``"<TypeName>"``
    (templates test whether media keys are present, never read their values)."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):  # subclasses (enums, ...) carry methods: back to the base type
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, np.generic):  # np.bool_(False) must stay falsy
        return _plain(value.item())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return f"<{type(value).__name__}>"


def _check_messages(messages) -> list[dict]:
    """The messages as the template sees them: keys whose value is None dropped (APIs send
    ``"content": None`` beside tool calls, and templates test for missing keys), and a
    message's reasoning copied under each name templates read it by."""
    if not isinstance(messages, list | tuple) or not messages:
        raise ValueError(
            "messages: expected a non-empty list of {'role': ..., 'content': ...} dicts, "
            f"got {messages!r:.80}"
        )
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise ValueError(
                f"messages[{i}]: expected a dict with 'role' and 'content', got {message!r:.80}"
            )
        if not isinstance(message["role"], str):
            raise ValueError(f"messages[{i}]['role']: expected a str, got {message['role']!r:.40}")
        message = {k: v for k, v in _plain(message).items() if v is not None}
        reasoning = next((message[k] for k in REASONING_FIELDS if k in message), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        out.append(message)
    return out


def _check_dicts(name: str, value) -> list | None:
    if value is None:
        return None
    if not isinstance(value, list | tuple) or not all(isinstance(v, Mapping) for v in value):
        raise ValueError(f"{name}: expected a list of dicts, got {value!r:.80}")
    return _plain(list(value))


def render(
    template: str,
    messages: list[dict],
    *,
    add_generation_prompt: bool = False,
    special_tokens: Mapping[str, str] | None = None,
    **variables,
) -> str:
    """The text of ``messages`` rendered by the Jinja chat ``template``.

    Args:
        template: the chat template's source.
        messages: the conversation, a list of dicts with at least ``role`` (a str) and
            ``content`` (text, a list of content blocks, or None).
        add_generation_prompt: append the header that opens the assistant's reply.
        special_tokens: template variables such as ``{"bos_token": "<s>"}``.
        **variables: further template variables (``tools``, ``documents``, template flags such
            as ``enable_thinking``); they override ``special_tokens`` of the same name.

    Raises ValueError naming ``messages`` for a malformed conversation or one the template
    refuses with ``raise_exception``, and naming ``chat_template`` when the template itself fails.
    """
    compiled = _compile(template)
    chat = _check_messages(messages)
    variables["tools"] = _check_dicts("tools", variables.get("tools"))
    variables["documents"] = _check_dicts("documents", variables.get("documents"))
    context = _plain({**(special_tokens or {}), **variables})
    try:
        return compiled.render(
            messages=chat, add_generation_prompt=add_generation_prompt, **context
        )
    except _Refused as exc:
        raise ValueError(f"messages: the chat template refuses them: {exc.message}") from None
    except (jinja2.TemplateError, TypeError) as exc:
        raise ValueError(f"chat_template: rendering failed: {exc}") from exc

"""OpenAI chat-completions requests as `bloodwork serve` honours them: validation, tool calls, constraints.

Everything here is pure (no model, no HTTP), so each rule is tested on its own; `serve.py` does the I/O.

What the server cannot honour is refused with a 400 in OpenAI's error shape (`RequestError`), never
ignored: a parameter it does not know, `n > 1`, log-probabilities, images, penalties, a tool that is not a
function, `response_format` next to `tool_choice: auto`, ...

Tool calls use the Hermes format, which a ChatML template (SmolLM2's) carries without change:

- the functions are listed in the system message, inside `<tools></tools>`, one JSON object a line;
- an assistant call is `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>` after its text;
- a tool result is a `tool` turn holding `<tool_response>\\n...\\n</tool_response>`.

With `tool_choice: required` or a named function, the answer is forced: the prompt ends with
`<tool_call>\\n` and decoding is constrained (llguidance) to `{"name": <one of the allowed>, "arguments":
<that function's parameters schema>}`, so the call is always well-formed. With `auto`, the model decodes
freely (text or calls) and `parse_calls` reads what it wrote; on a `+constrained` spec every answer is
constrained, so `auto` is decoded as `required` there (send `tool_choice: none` for text).
`response_format` `json_object` / `json_schema` constrains a text answer to a JSON object / that schema,
on every local spec.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from bloodwork.oracles.base import Message

Constraint = Literal["none", "tool_call", "json_object", "json_schema", "isa_frame"]
ToolMode = Literal["none", "auto", "call"]

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
# Separators as the constraint writes them (constrained.JSON_FORMAT), so history and new calls look alike.
_SEPARATORS = (", ", ": ")
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_CALL_BLOCK = re.compile(re.escape(CALL_OPEN) + r"\s*(.*?)\s*(?:" + re.escape(CALL_CLOSE) + r"|\Z)", re.S)

# Parameters whose default (or null) is what the server does anyway: any other value cannot be honoured.
_ONLY_DEFAULT: dict[str, Any] = {"n": 1, "frequency_penalty": 0, "presence_penalty": 0, "logprobs": False,
                                 "top_logprobs": 0, "logit_bias": {}, "store": False, "modalities": ["text"]}
# Parameters that cannot change the answer (bookkeeping for the client's own provider).
_NO_EFFECT = frozenset({"model", "user", "metadata", "service_tier", "safety_identifier", "prompt_cache_key"})
# Known to OpenAI, never honoured here.
_REFUSED = {"functions": "legacy `functions` (send `tools`)", "function_call": "legacy `function_call` (send "
            "`tool_choice`)", "audio": "audio output", "prediction": "predicted outputs",
            "reasoning_effort": "reasoning effort (not a reasoning model)", "web_search_options": "web search",
            "verbosity": "verbosity"}
_HONOURED = frozenset({"messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "stream",
                       "stream_options", "stop", "response_format", "tools", "tool_choice", "parallel_tool_calls"})


class RequestError(Exception):
    """A request the server refuses; `serve.py` answers it as `{"error": {message, type, param, code}}`."""

    def __init__(self, message: str, *, status: int = 400, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.param = param
        self.code = code


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]

    def listing(self) -> str:
        function: dict[str, Any] = {"name": self.name, "description": self.description, "parameters": self.parameters}
        return json.dumps({"type": "function", "function": function}, ensure_ascii=False)


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # a JSON object, as text (OpenAI's `function.arguments`)

    def wire(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class ChatRequest:
    """A validated request, ready for the model: messages rendered for the chat template, the constraint."""

    messages: list[Message]
    max_tokens: int | None
    temperature: float | None
    top_p: float | None
    seed: int | None
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False
    tools: dict[str, Tool] = field(default_factory=dict)
    tool_mode: ToolMode = "none"
    parallel_calls: bool = True
    constraint: Constraint = "none"
    schema: dict[str, Any] | None = None  # what decoding is constrained to (None with "isa_frame": the ISA)
    prefill: str = ""  # text the answer starts with, fed to the model after the assistant header

    @property
    def constrained(self) -> bool:
        return self.constraint != "none"


# ---- validation ---------------------------------------------------------------------------------------

def _number(body: dict[str, Any], name: str, kind: type) -> Any:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or (kind is int and not isinstance(value, int)):
        raise RequestError(f"{name} must be a{'n integer' if kind is int else ' number'}", param=name)
    return kind(value)


def _text(value: Any, where: str) -> str:
    """Message content: a string, or a list of text parts (any other part cannot be honoured)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = []
        for part in value:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise RequestError(f"{where}: only text content parts can be honoured, not {kind!r}", param=where)
            parts.append(part["text"])
        return "".join(parts)
    raise RequestError(f"{where}: content must be a string or a list of text parts", param=where)


def _stop(value: Any) -> tuple[str, ...]:
    """OpenAI's `stop`: null, a string, or up to 4 strings."""
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) and s for s in stops):
        raise RequestError("stop must be a non-empty string or a list of up to 4 of them", param="stop")
    return tuple(stops)


def _check_params(body: dict[str, Any]) -> None:
    for key, value in body.items():
        if value is None or key in _HONOURED or key in _NO_EFFECT:
            continue
        if key in _REFUSED:
            raise RequestError(f"{key}: {_REFUSED[key]} cannot be honoured by this server", param=key)
        if key in _ONLY_DEFAULT:
            if value != _ONLY_DEFAULT[key]:
                raise RequestError(f"{key}={json.dumps(value)} cannot be honoured by this server (only "
                                   f"{json.dumps(_ONLY_DEFAULT[key])})", param=key)
            continue
        raise RequestError(f"Unrecognized request argument supplied: {key}", param=key)


def _tools(value: Any) -> dict[str, Tool]:
    if not isinstance(value, list) or not value:
        raise RequestError("tools must be a non-empty list of function tools", param="tools")
    tools: dict[str, Tool] = {}
    for i, item in enumerate(value):
        where = f"tools[{i}]"
        if not isinstance(item, dict) or item.get("type") != "function" or not isinstance(item.get("function"), dict):
            kind = item.get("type") if isinstance(item, dict) else None
            raise RequestError(f"{where}: only tools of type 'function' can be honoured, not {kind!r}", param=where)
        fn = item["function"]
        name = fn.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise RequestError(f"{where}.function.name must match [A-Za-z0-9_-]{{1,64}}", param=where)
        if name in tools:
            raise RequestError(f"{where}: two tools are named {name!r}", param=where)
        params = fn.get("parameters")
        if params is None:
            params = {"type": "object", "properties": {}}
        if not isinstance(params, dict):
            raise RequestError(f"{where}.function.parameters must be a JSON Schema object", param=where)
        description = fn.get("description") or ""
        if not isinstance(description, str):
            raise RequestError(f"{where}.function.description must be a string", param=where)
        tools[name] = Tool(name=name, description=description, parameters=params)
    return tools


def _tool_choice(value: Any, tools: dict[str, Tool]) -> tuple[ToolMode, tuple[str, ...]]:
    """The mode and the functions a forced call may name."""
    if value is None or value == "auto":
        return "auto", tuple(tools)
    if value == "none":
        return "none", ()
    if value == "required":
        return "call", tuple(tools)
    if isinstance(value, dict) and value.get("type") == "function" and isinstance(value.get("function"), dict):
        name = value["function"].get("name")
        if name not in tools:
            raise RequestError(f"tool_choice names {name!r}, which is not among the tools", param="tool_choice")
        return "call", (name,)
    raise RequestError("tool_choice must be 'none', 'auto', 'required' or {'type': 'function', 'function': "
                       "{'name': ...}}", param="tool_choice")


def _response_format(value: Any) -> tuple[Constraint, dict[str, Any] | None]:
    if value is None:
        return "none", None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return "none", None
    if kind == "json_object":
        return "json_object", {"type": "object"}
    if kind == "json_schema":
        spec = value.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise RequestError("response_format.json_schema.schema must be a JSON Schema object",
                               param="response_format")
        return "json_schema", schema
    raise RequestError(f"response_format type {kind!r} cannot be honoured (text, json_object, json_schema)",
                       param="response_format")


def _call_schema(tools: dict[str, Tool], names: tuple[str, ...]) -> dict[str, Any]:
    """A call to one of `names`: name first, then that function's arguments (llguidance keeps key order)."""
    shapes = [{"type": "object", "properties": {"name": {"const": n}, "arguments": tools[n].parameters},
               "required": ["name", "arguments"], "additionalProperties": False} for n in names]
    return shapes[0] if len(shapes) == 1 else {"anyOf": shapes}


def parse_request(body: dict[str, Any], *, spec_constrained: bool) -> ChatRequest:
    """Validate an OpenAI chat-completions body; what cannot be honoured raises RequestError (400)."""
    _check_params(body)
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw or not all(isinstance(m, dict) for m in raw):
        raise RequestError("messages must be a non-empty list of objects", param="messages")
    max_tokens = _number(body, "max_completion_tokens", int)
    if max_tokens is None:
        max_tokens = _number(body, "max_tokens", int)
    req = ChatRequest(messages=[], max_tokens=max_tokens, temperature=_number(body, "temperature", float),
                      top_p=_number(body, "top_p", float), seed=_number(body, "seed", int),
                      stop=_stop(body.get("stop")), stream=bool(body.get("stream")))
    options = body.get("stream_options")
    req.include_usage = bool(options.get("include_usage")) if isinstance(options, dict) else False
    if body.get("tools") is not None:
        req.tools = _tools(body["tools"])
        req.tool_mode, names = _tool_choice(body.get("tool_choice"), req.tools)
        if req.tool_mode == "auto" and spec_constrained:
            req.tool_mode = "call"
    elif body.get("tool_choice") not in (None, "none"):
        raise RequestError("tool_choice is only allowed when tools are given", param="tool_choice")
    req.parallel_calls = body.get("parallel_tool_calls") is not False
    fmt, fmt_schema = _response_format(body.get("response_format"))
    if req.tool_mode == "call":
        req.constraint, req.schema, req.prefill = "tool_call", _call_schema(req.tools, names), CALL_OPEN + "\n"
    elif fmt != "none" and req.tool_mode == "auto":
        raise RequestError("response_format with tools and tool_choice 'auto' cannot be honoured together: send "
                           "tool_choice 'none' for a JSON answer or 'required' for a call", param="response_format")
    elif fmt != "none":
        req.constraint, req.schema = fmt, fmt_schema
    elif spec_constrained:
        req.constraint = "isa_frame"
    req.messages = render_messages(raw, req.tools if req.tool_mode != "none" else {})
    return req


# ---- prompt rendering ---------------------------------------------------------------------------------

def tools_block(tools: dict[str, Tool]) -> str:
    listing = "\n".join(t.listing() for t in tools.values())
    return ("# Tools\n\nYou may call one or more functions. Their signatures, as JSON Schema, are within "
            f"<tools></tools>:\n<tools>\n{listing}\n</tools>\n\nTo call a function, answer with a JSON object "
            "of its name and arguments within <tool_call></tool_call> tags:\n"
            f"{CALL_OPEN}\n{{\"name\": \"function name\", \"arguments\": {{\"arg\": \"value\"}}}}\n{CALL_CLOSE}")


def call_text(name: str, arguments: dict[str, Any]) -> str:
    body = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False, separators=_SEPARATORS)
    return f"{CALL_OPEN}\n{body}\n{CALL_CLOSE}"


def _assistant(message: dict[str, Any], index: int, seen: dict[str, str]) -> str:
    where = f"messages[{index}]"
    content = message.get("content")
    text = "" if content is None else _text(content, where)
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise RequestError(f"{where}.tool_calls must be a list", param=where)
    rendered = []
    for j, call in enumerate(calls):
        fn, call_id = (call.get("function"), call.get("id")) if isinstance(call, dict) else (None, None)
        if not isinstance(fn, dict) or call.get("type", "function") != "function" or not isinstance(call_id, str):
            raise RequestError(f"{where}.tool_calls[{j}] must be {{id, type: function, function: {{name, "
                               "arguments}}}}", param=where)
        try:
            arguments = json.loads(fn.get("arguments") or "{}")
        except (TypeError, ValueError) as err:
            raise RequestError(f"{where}.tool_calls[{j}].function.arguments is not JSON: {err}", param=where) from err
        seen[call_id] = str(fn.get("name"))
        rendered.append(call_text(str(fn.get("name")), arguments))
    if content is None and not calls:
        raise RequestError(f"{where}: an assistant message needs content or tool_calls", param=where)
    return "\n".join([text, *rendered] if text else rendered)


def render_messages(raw: list[dict[str, Any]], tools: dict[str, Tool]) -> list[Message]:
    """OpenAI messages as plain {role, content} turns for the model's chat template (module docstring)."""
    out: list[Message] = []
    seen: dict[str, str] = {}  # tool call id -> function name, from the assistant turns so far
    for i, m in enumerate(raw):
        role = m.get("role")
        where = f"messages[{i}]"
        if role in ("system", "developer", "user"):
            out.append({"role": "user" if role == "user" else "system", "content": _text(m.get("content"), where)})
        elif role == "assistant":
            out.append({"role": "assistant", "content": _assistant(m, i, seen)})
        elif role == "tool":
            call_id = m.get("tool_call_id")
            if call_id not in seen:
                raise RequestError(f"{where}: tool_call_id {call_id!r} answers no earlier assistant tool call",
                                   param=where)
            out.append({"role": "tool", "content": f"<tool_response>\n{_text(m.get('content'), where)}\n"
                                                   "</tool_response>"})
        else:
            raise RequestError(f"{where}: role {role!r} cannot be honoured (system, developer, user, assistant, "
                               "tool)", param=where)
    if tools:
        block = tools_block(tools)
        if out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{block}"}
        else:
            out.insert(0, {"role": "system", "content": block})
    return out


# ---- reading the answer -------------------------------------------------------------------------------

def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _call(body: str, tools: dict[str, Tool]) -> ToolCall | None:
    """One call from the JSON between the tags, or None when it is not a call to a known function."""
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    if not isinstance(obj, dict) or obj.get("name") not in tools:
        return None
    arguments = obj.get("arguments", {})
    if isinstance(arguments, str):  # some models write the arguments as a JSON string, as the API does
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    return ToolCall(id=new_call_id(), name=obj["name"],
                    arguments=json.dumps(arguments, ensure_ascii=False, separators=_SEPARATORS))


def parse_calls(text: str, tools: dict[str, Tool], parallel: bool = True) -> tuple[str | None, list[ToolCall]]:
    """(content, calls) of a freely decoded answer. Content is the text outside the call blocks, trailing
    whitespace dropped (None when blank). A block that is not a call to a known function keeps the whole
    answer as text: the client sees what the model wrote, never a guess. Without `parallel`, the answer
    ends at the first call."""
    blocks = list(_CALL_BLOCK.finditer(text))
    if not blocks:
        return text, []
    if not parallel:
        blocks = blocks[:1]
        text = text[:blocks[0].end()]
    calls = [_call(b.group(1), tools) for b in blocks]
    if any(c is None for c in calls):
        return text, []
    content = _CALL_BLOCK.sub("", text).rstrip()  # rstrip only: a stream has sent the leading text already
    return content if content.strip() else None, [c for c in calls if c is not None]


def forced_call(text: str, tools: dict[str, Tool]) -> ToolCall | None:
    """The call of a constrained answer (the JSON after the `<tool_call>` prefill); None if cut short."""
    return _call(text.split(CALL_CLOSE, 1)[0].strip(), tools)


def held_back(text: str) -> int:
    """How much of `text` may be streamed as content while a call could still begin: nothing from the
    call tag on, nor a tail that could be its start."""
    at = text.find(CALL_OPEN)
    if at >= 0:
        return at
    for k in range(min(len(CALL_OPEN) - 1, len(text)), 0, -1):
        if text.endswith(CALL_OPEN[:k]):
            return len(text) - k
    return len(text)

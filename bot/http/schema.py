"""The body of `POST /v1/generate`, checked field by field: a wrong field is a
`BadRequest` that names it, with what was expected."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from settings import EngineConfig
from settings.checks import did_you_mean

from ..generation import Message, Sampling

ROLES = ("system", "user", "assistant")
MAX_STOP_STRINGS = 4
GENERATE_FIELDS = ("prompt", "messages", "adapter", "version", "max_new_tokens",
                   "temperature", "top_p", "stop", "stream")


class BadRequest(ValueError):
    """A request body field is wrong; `field` names it for the client."""

    def __init__(self, field: str, problem: str):
        self.field = field
        super().__init__(f"{field}: {problem}")


@dataclass(frozen=True)
class ApiCall:
    messages: list[Message]
    adapter: str | None
    version: int | None
    sampling: Sampling
    stream: bool


def parse_generate(body: Any, defaults: EngineConfig) -> ApiCall:
    """A /v1/generate body checked field by field; raises BadRequest naming the field."""
    if not isinstance(body, dict):
        raise BadRequest("body", 'expected a JSON object such as {"prompt": "Hello"}')
    for key in body:
        if key not in GENERATE_FIELDS:
            raise BadRequest(key, f"unknown field{did_you_mean(key, GENERATE_FIELDS)}")
    if ("prompt" in body) == ("messages" in body):
        raise BadRequest("prompt", "send exactly one of 'prompt' (a string) or 'messages' "
                         "(a list of {role, content})")
    if "prompt" in body:
        prompt = body["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise BadRequest("prompt", "expected a non-empty string")
        messages = [{"role": "user", "content": prompt}]
    else:
        messages = _messages(body["messages"])
    adapter = _optional(body, "adapter", str)
    version = _optional(body, "version", int)
    if version is not None and (adapter is None or version < 1):
        raise BadRequest("version", "a version number (1 or more) needs an 'adapter'")
    overrides: dict[str, Any] = {}
    for key, low, high in (("max_new_tokens", 1, 8192), ("temperature", 0.0, 2.0),
                           ("top_p", 0.01, 1.0)):
        value = _optional(body, key, int if key == "max_new_tokens" else float)
        if value is not None:
            if not low <= value <= high:
                raise BadRequest(key, f"out of range: allowed {low} to {high}")
            overrides[key] = value
    stop = body.get("stop", [])
    if (not isinstance(stop, list) or len(stop) > MAX_STOP_STRINGS
            or not all(isinstance(s, str) and s for s in stop)):
        raise BadRequest("stop", f"expected a list of up to {MAX_STOP_STRINGS} non-empty "
                         f"strings")
    overrides["stop"] = tuple(stop)
    stream = _optional(body, "stream", bool) or False
    return ApiCall(messages, adapter, version, Sampling.from_config(defaults, **overrides),
                   stream)


def _messages(value: Any) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise BadRequest("messages", "expected a non-empty list of {\"role\", \"content\"}")
    messages = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict) or set(message) - {"role", "content"}:
            raise BadRequest(where, "expected an object with only 'role' and 'content'")
        if message.get("role") not in ROLES:
            raise BadRequest(f"{where}.role", f"expected one of {', '.join(ROLES)}")
        if not isinstance(message.get("content"), str):
            raise BadRequest(f"{where}.content", "expected a string")
        messages.append({"role": message["role"], "content": message["content"]})
    if messages[-1]["role"] != "user":
        raise BadRequest(f"messages[{len(messages) - 1}].role",
                         "the last message must be the user's")
    return messages


def _optional(body: dict[str, Any], key: str, kind: type) -> Any:
    value = body.get(key)
    if value is None:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        expected = {str: "a string", int: "an integer", float: "a number",
                    bool: "true or false"}[kind]
        raise BadRequest(key, f"expected {expected}")
    return value

"""The official SDK's GA server event types, applied strictly to what a server sends.

The SDK's own union marks ``type`` with its ``PropertyInfo``, which pydantic does not
treat as a discriminator, and its models accept any extra field (``extra="allow"``). So
an event is validated against a real discriminated union built from the SDK's members,
in strict mode from JSON, and the validated model is then walked: a field the SDK does
not declare is an error, unless upstream is known to send it (:data:`UPSTREAM_EXTRAS`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Annotated, Any, Union, get_args

from openai.types.realtime import RealtimeServerEvent
from pydantic import BaseModel, Field, TypeAdapter

_MEMBERS = get_args(get_args(RealtimeServerEvent)[0])
GA_SERVER: TypeAdapter[Any] = TypeAdapter(
    Annotated[Union[_MEMBERS], Field(discriminator="type")])  # noqa: UP007

# Fields upstream sends that the SDK's models do not declare. The session object of
# session.created / session.updated carries its id, object and expires_at (OpenAI's own
# session.created example in its OpenAPI spec; expires_at is how a client learns the
# 60-minute deadline, and voiced reads it).
UPSTREAM_EXTRAS = frozenset({
    ("session.created", "session.id"), ("session.created", "session.object"),
    ("session.created", "session.expires_at"), ("session.updated", "session.id"),
    ("session.updated", "session.object"), ("session.updated", "session.expires_at"),
})


def undeclared(value: Any, path: str = "") -> Iterator[str]:
    """The dotted paths of every field of a validated model its class does not declare."""
    if isinstance(value, BaseModel):
        for key in value.model_extra or {}:
            yield f"{path}.{key}".lstrip(".")
        for name in type(value).model_fields:
            yield from undeclared(getattr(value, name), f"{path}.{name}")
    elif isinstance(value, list | tuple):
        for element in value:
            yield from undeclared(element, f"{path}[]")
    elif isinstance(value, dict):
        for key, element in value.items():
            yield from undeclared(element, f"{path}.{key}")


def strict_event(event: dict[str, Any] | str | bytes) -> Any:
    """Validate one server event (a dict or its JSON) against the SDK's GA types.

    Raises:
        pydantic.ValidationError: not a GA server event, or a field of the wrong type.
        AssertionError: a field the SDK does not declare (and upstream does not send).
    """
    text = event if isinstance(event, str | bytes) else json.dumps(event)
    model = GA_SERVER.validate_json(text, strict=True)
    extra = [p for p in undeclared(model) if (model.type, p) not in UPSTREAM_EXTRAS]
    assert not extra, f"{model.type}: fields the GA types do not declare: {extra}"
    return model

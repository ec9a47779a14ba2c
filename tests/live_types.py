"""The official SDK's GPT-Live event types, applied strictly (as tests/ga_types does for GA).

``openai.types.live.ServerEvent`` and ``ClientEvent`` mark ``type`` with the SDK's own
``PropertyInfo``, which pydantic does not take for a discriminator, and their models
accept any extra field. So each event is validated against a real discriminated union of
the SDK's members, in strict mode from JSON, and the validated model is then walked
(``tests.ga_types.undeclared``): a field the SDK does not declare is an error.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Union, get_args

from openai.types.live import ClientEvent, ServerEvent
from pydantic import Field, TypeAdapter

from tests.ga_types import undeclared


def strict_union(alias: Any) -> TypeAdapter[Any]:
    """A pydantic discriminated union (on ``type``) of an SDK union's members."""
    members = get_args(get_args(alias)[0])
    return TypeAdapter(Annotated[Union[members], Field(discriminator="type")])  # noqa: UP007


LIVE_SERVER = strict_union(ServerEvent)
LIVE_CLIENT = strict_union(ClientEvent)

# Server events only a sideband connection receives: a primary WebSocket never gets them.
SIDEBAND_ONLY = frozenset({"session.input_audio.append", "transport.dtmf.received",
                           "transport.dtmf.send", "transport.dtmf.sent", "transport.ringing",
                           "transport.answered", "transport.failed"})


def strict(adapter: TypeAdapter[Any], event: dict[str, Any] | str | bytes) -> Any:
    """Validate ``event`` against ``adapter`` from JSON, strictly, no undeclared field."""
    text = event if isinstance(event, str | bytes) else json.dumps(event)
    model = adapter.validate_json(text, strict=True)
    extra = list(undeclared(model))
    assert not extra, f"{model.type}: fields the Live types do not declare: {extra}"
    return model


def strict_server_event(event: dict[str, Any] | str | bytes) -> Any:
    """Validate one server event against the SDK's Live types; returns the model.

    Raises:
        pydantic.ValidationError: not a Live server event, or a field of the wrong type.
        AssertionError: a field the SDK does not declare, or a sideband-only event.
    """
    model = strict(LIVE_SERVER, event)
    assert model.type not in SIDEBAND_ONLY, f"{model.type} on a primary WebSocket"
    if model.type == "session.output_audio.delta":  # timestamps are sideband-only too
        assert model.start_ms is None and model.end_ms is None, "timestamped output audio"
    return model


def strict_client_event(event: dict[str, Any] | str | bytes) -> Any:
    """Validate one client event against the SDK's Live ``ClientEvent``; returns the model."""
    return strict(LIVE_CLIENT, event)

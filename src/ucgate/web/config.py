"""The ``[web]`` section: browser pages, agent login tokens and the public chat widget."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["WebConfig"]


class WebConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Serve /desk/, /widget/, /wallboard/ and POST /v1/auth/login.
    pages: bool = True
    # Lifetime of the bearer token POST /v1/auth/login returns (the desk logs in again).
    token_ttl: int = Field(default=3600, ge=60, le=86400)
    # URL the pages open for SIP over WebSocket (RFC 7118). Unset: ws://<page host>:<port of
    # the first ws listener in sip.listen>.
    sip_ws_url: str | None = None
    # POST /v1/widget/sessions is public (no API key): off unless enabled here.
    widget_enabled: bool = False
    # The queue widget sessions' chat channel waits in (must exist and take chat).
    widget_queue: str | None = Field(default=None, min_length=1, max_length=128)
    # Origins (scheme://host[:port]) whose pages may create widget sessions; a request
    # whose Origin header is not listed gets 403. Include ucgate's own origin to use /widget/.
    widget_allowed_origins: tuple[str, ...] = ()
    # Lifetime of a widget session's token and guest SIP credentials' usefulness.
    widget_token_ttl: int = Field(default=7200, ge=60, le=86400)
    # Largest accepted request body on the widget routes and largest chat message, bytes.
    widget_max_body: int = Field(default=4096, ge=256, le=65536)
    # Chat messages kept per session for late joiners (the desk opening after the offer).
    chat_history: int = Field(default=200, ge=1, le=10000)

    @field_validator("sip_ws_url")
    @classmethod
    def _ws_url(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("ws", "wss"):
            raise ValueError("must be a ws:// or wss:// URL")
        return value

    @field_validator("widget_allowed_origins")
    @classmethod
    def _origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for origin in value:
            parts = urlsplit(origin)
            if (
                parts.scheme not in ("http", "https")
                or not parts.netloc
                or parts.path
                or parts.query
            ):
                raise ValueError("each origin must be scheme://host[:port] with no path")
        return tuple(o.lower() for o in value)

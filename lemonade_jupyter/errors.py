"""The whole exception tree of lemonade_jupyter and its mapping to HTTP.

Every error the router can raise is a subclass of :class:`LemonadeError` and carries its
HTTP status and OpenAI-style error ``type``/``code`` as class attributes, so the one place that
renders errors (``server.base.LemonadeAPIHandler.write_error``) never needs an ``isinstance``
ladder. The kernel side imports only this module.

::

    LemonadeError                    500 internal_error
    ├── InvalidRequestError          400 invalid_request_error
    ├── ModelNotFoundError           404 model_not_found
    ├── SlotsPinnedError             409 slots_pinned_error (every slot of the pool is pinned)
    ├── CoolingDownError             503 + Retry-After (crash-loop guard)
    ├── EngineMissingError           503 engine_missing (names what to install)
    ├── ModelLoadError               500 model_load_error (backend could not start)
    ├── BackendShutdownError         503 router_shutdown
    ├── UpstreamError                502 upstream_error (backend transport failure mid-request)
    └── ClientError                  kernel side; carries the server's status and envelope
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "LemonadeError",
    "InvalidRequestError",
    "ModelNotFoundError",
    "SlotsPinnedError",
    "CoolingDownError",
    "EngineMissingError",
    "ModelLoadError",
    "BackendShutdownError",
    "UpstreamError",
    "ClientError",
    "error_body",
]


class LemonadeError(Exception):
    """Base of every error the router raises; renders as a JSON envelope."""

    status_code: int = 500
    error_type: str = "internal_error"
    code: str | None = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.extra = extra

    def headers(self) -> dict[str, str]:
        """Extra response headers this error implies (e.g. ``Retry-After``)."""
        return {}

    def to_body(self) -> dict[str, Any]:
        """The OpenAI-compatible body ``{"error": {...}}`` for this error."""
        return error_body(
            self.message, self.error_type, code=self.code, param=self.param, **self.extra
        )


class InvalidRequestError(LemonadeError):
    """The request itself is wrong (missing parameter, wrong type, bad value)."""

    status_code = 400
    error_type = "invalid_request_error"
    code = None


class ModelNotFoundError(LemonadeError):
    """The model name is not in the catalog, or not loaded where it must be."""

    status_code = 404
    error_type = "invalid_request_error"
    code = "model_not_found"


class SlotsPinnedError(LemonadeError):
    """A fresh load needs a slot, but every model of its type is pinned."""

    status_code = 409
    error_type = "slots_pinned_error"
    code = "slots_pinned_error"

    def __init__(self, model_type: str, requested_model: str) -> None:
        super().__init__(
            f"All loaded models of type {model_type} are pinned. Unload a model first.",
            param="model",
            requested_model=requested_model,
        )
        self.model_type = model_type
        self.requested_model = requested_model


class CoolingDownError(LemonadeError):
    """The model's backend failed repeatedly; loads are refused until the cooldown ends."""

    status_code = 503
    error_type = "service_unavailable"
    code = "model_cooling_down"

    def __init__(self, model_name: str, retry_after_s: float, reason: str = "") -> None:
        seconds = max(1, int(retry_after_s + 0.999))
        message = (
            f"Model '{model_name}' failed to start or crashed repeatedly; "
            f"retry in {seconds} s."
        )
        if reason:
            message += f" Last error: {reason}"
        super().__init__(message, param="model")
        self.retry_after_s = seconds

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class EngineMissingError(LemonadeError):
    """The engine binary for a recipe is not installed."""

    status_code = 503
    error_type = "service_unavailable"
    code = "engine_missing"


class ModelLoadError(LemonadeError):
    """The backend process did not become ready (after the retry)."""

    status_code = 500
    error_type = "server_error"
    code = "model_load_error"


class BackendShutdownError(LemonadeError):
    """The router is shutting down and takes no new work."""

    status_code = 503
    error_type = "service_unavailable"
    code = "router_shutdown"


class UpstreamError(LemonadeError):
    """The backend failed while serving a request (connection reset, crash)."""

    status_code = 502
    error_type = "server_error"
    code = "upstream_error"


class ClientError(LemonadeError):
    """Raised by the kernel client: the server answered with an error envelope."""

    def __init__(self, status_code: int, body: dict[str, Any] | None, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.body = body or {}
        err = self.body.get("error") if isinstance(self.body, dict) else None
        if isinstance(err, dict):
            self.error_type = str(err.get("type", "error"))
            self.code = err.get("code")


def error_body(
    message: str,
    error_type: str,
    *,
    code: str | None = None,
    param: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Build the one error envelope every route answers with."""
    err: dict[str, Any] = {"message": message, "type": error_type}
    if code is not None:
        err["code"] = code
    if param is not None:
        err["param"] = param
    err.update(extra)
    return {"error": err}

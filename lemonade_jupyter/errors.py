"""The whole exception tree of lemonade_jupyter and its mapping to HTTP.

Every error the router can raise is a subclass of :class:`LemonadeError` and carries its
HTTP status and OpenAI-style error ``type``/``code`` as class attributes, so the one place that
renders errors (``server.base.LemonadeHandler.write_error``) never needs an ``isinstance``
ladder. The kernel side imports only this module.

::

    LemonadeError                    500 internal_error
    ├── InvalidRequestError          400 invalid_request_error
    │   ├── UnsupportedAudioFormatError  400 unsupported_audio_format (names the formats read)
    │   ├── AudioTooLongError        400 audio_too_long (beyond max_audio_seconds)
    │   └── AudioTooLargeError       413 audio_too_large (an upload beyond max_audio_upload_mib)
    ├── ModelNotFoundError           404 model_not_found
    ├── SlotsPinnedError             409 slots_pinned_error (every slot of the pool is pinned)
    ├── InsufficientMemoryError      409 insufficient_memory (pinned or busy models hold it)
    ├── CoolingDownError             503 + Retry-After (crash-loop guard)
    ├── QueueFullError               429 + Retry-After (too many requests wait for a model)
    ├── EngineMissingError           503 engine_missing (names what to install)
    ├── ModelLoadError               500 model_load_error (backend could not start)
    ├── BackendShutdownError         503 router_shutdown
    ├── UpstreamError                502 upstream_error (backend transport failure mid-request)
    │   ├── BackendTransportError    502 the connection to a backend broke: replayed once
    │   ├── ReplicaTransportError    one replica of a remote model failed (internal: failover)
    │   │   ├── ReplicaUnreachableError  refused, reset, closed, TLS verification failed
    │   │   └── ReplicaTimeoutError      504 no connection in time, silence, the total deadline
    │   ├── RemoteUnreachableError   502 upstream_unreachable (no replica of a remote model answers)
    │   ├── RemoteTimeoutError       504 upstream_timeout (a remote model's replica timed out)
    │   ├── RemoteLoopError          508 upstream_loop (a request came back to this router)
    │   ├── RemoteRedirectError      502 upstream_redirect (a redirect that is not followed)
    │   └── RemoteAnswerTooLargeError 502 upstream_answer_too_large (beyond remote_max_answer_mib)
    ├── HubError                     502 hub_error (the Hugging Face Hub answered unexpectedly)
    │   ├── HubAuthError             401 hub_unauthorized (names HF_TOKEN)
    │   ├── HubAccessError           403 hub_forbidden (gated repository; names HF_TOKEN)
    │   ├── HubNotFoundError         404 checkpoint_not_found (repository, revision or file)
    │   └── HubUnavailableError      503 hub_unavailable (offline or unreachable)
    ├── UnverifiedSourceError        403 unverified_source (an unpinned curated model, off the hub)
    ├── InsufficientStorageError     507 insufficient_storage (a pull does not fit on disk)
    ├── PullCancelledError           409 pull_cancelled
    ├── QuotaExceededError           409 quota_exceeded (node mode: a user's pins or pinned memory)
    │   └── TooManyRequestsError     429 + Retry-After (node mode: a user's requests in flight)
    ├── ForbiddenError               403 node mode: the caller may not do this
    │   ├── MissingScopeError        403 missing_scope (names the Hub scope it needs)
    │   └── LockedDownError          403 locked_down (names the node's rule that refuses it)
    └── ClientError                  kernel side; carries the server's status and envelope
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "LemonadeError",
    "InvalidRequestError",
    "UnsupportedAudioFormatError",
    "AudioTooLongError",
    "AudioTooLargeError",
    "ModelNotFoundError",
    "SlotsPinnedError",
    "InsufficientMemoryError",
    "CoolingDownError",
    "QueueFullError",
    "EngineMissingError",
    "ModelLoadError",
    "BackendShutdownError",
    "UpstreamError",
    "BackendTransportError",
    "RemoteUnreachableError",
    "RemoteTimeoutError",
    "RemoteLoopError",
    "RemoteRedirectError",
    "RemoteAnswerTooLargeError",
    "HubError",
    "HubAuthError",
    "HubAccessError",
    "HubNotFoundError",
    "HubUnavailableError",
    "UnverifiedSourceError",
    "InsufficientStorageError",
    "PullCancelledError",
    "QuotaExceededError",
    "TooManyRequestsError",
    "ForbiddenError",
    "MissingScopeError",
    "LockedDownError",
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


class UnsupportedAudioFormatError(InvalidRequestError):
    """An upload to the audio routes is not audio the router reads; the message lists what is."""

    code = "unsupported_audio_format"


class AudioTooLongError(InvalidRequestError):
    """The uploaded audio lasts longer than ``max_audio_seconds``."""

    code = "audio_too_long"


class AudioTooLargeError(InvalidRequestError):
    """An upload to the audio routes is larger than ``max_audio_upload_mib``."""

    status_code = 413
    code = "audio_too_large"


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


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.0f} MiB"


class InsufficientMemoryError(LemonadeError):
    """A model does not fit its device, and only pinned or busy models could make room."""

    status_code = 409
    error_type = "insufficient_memory_error"
    code = "insufficient_memory"

    def __init__(self, model_name: str, device: str, *, needed_bytes: int, free_bytes: int,
                 pinned_bytes: int, devices: list[dict[str, Any]] | None = None) -> None:
        """``device`` and the figures are the first device where it does not fit; a model
        spread over several GPUs also gets ``devices``: the same figures for each of them."""
        extra: dict[str, Any] = {} if devices is None else {"devices": devices}
        super().__init__(
            f"Model '{model_name}' needs about {_mib(needed_bytes)} on {device}, where "
            f"{_mib(free_bytes)} is free and pinned models hold {_mib(pinned_bytes)}; the rest "
            "is held by busy models or other processes. Unpin or unload a model first, or "
            "raise the memory budget.",
            param="model", needed_bytes=needed_bytes, free_bytes=free_bytes,
            pinned_bytes=pinned_bytes, device=device, **extra,
        )
        self.needed_bytes = needed_bytes
        self.free_bytes = free_bytes
        self.pinned_bytes = pinned_bytes


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


class QueueFullError(LemonadeError):
    """Every slot of a model is busy and its queue of waiting requests is full.

    Answered at once instead of an unbounded wait (the ``max_queue`` setting and load
    option); ``Retry-After`` says when a slot is likely to be free again.
    """

    status_code = 429
    error_type = "rate_limit_error"
    code = "queue_full"

    def __init__(self, model_name: str, *, slots: int, queued: int,
                 retry_after_s: int = 1) -> None:
        super().__init__(
            f"Model '{model_name}' is busy: its {slots} slot(s) are in use and {queued} "
            "request(s) already wait for it (max_queue). Retry later.",
            param="model", slots=slots, queued=queued,
        )
        self.retry_after_s = retry_after_s

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


class BackendTransportError(UpstreamError):
    """The connection to a backend failed (refused, reset, closed mid-answer).

    Raised by whatever sends a request to a backend (the proxy's upstream pool, a test's
    client); ``Router.call`` catches it, reports the backend and replays the request once.
    """


class ReplicaTransportError(UpstreamError):
    """A request to one replica of a remote model got no (whole) answer.

    Raised by the transport a request is sent with; ``RemoteRegistry.call`` catches it, fails
    over by the retry rule and raises one of the remote errors below instead, so a client never
    sees it (not exported). ``str()`` holds no header. ``sent``: the replica may have received
    the request (a connection was open when it failed). ``marks_down``: the failure says the
    replica is unwell (refused, silent), rather than the request slow as a whole."""

    code = "upstream_unreachable"

    def __init__(self, message: str, *, sent: bool, marks_down: bool = True) -> None:
        super().__init__(message, param="model")
        self.sent = sent
        self.marks_down = marks_down


class ReplicaUnreachableError(ReplicaTransportError):
    """Refused, reset, closed before an answer, unresolvable, or TLS verification failed."""


class ReplicaTimeoutError(ReplicaTransportError):
    """No connection within the connect timeout, silence beyond the read timeout, or no whole
    answer within the total deadline."""

    status_code = 504
    error_type = "timeout_error"
    code = "upstream_timeout"


class RemoteUnreachableError(UpstreamError):
    """No replica of a remote model could be reached (refused, unresolvable, TLS failure)."""

    code = "upstream_unreachable"


class RemoteTimeoutError(UpstreamError):
    """A remote model's replica did not answer within ``remote_timeout_s``."""

    status_code = 504
    error_type = "timeout_error"
    code = "upstream_timeout"


class RemoteLoopError(UpstreamError):
    """A request came back to the router that forwarded it (a remote model points at itself)."""

    status_code = 508
    error_type = "invalid_request_error"
    code = "upstream_loop"


class RemoteRedirectError(UpstreamError):
    """A replica redirected to another origin, or more often than allowed: not followed."""

    code = "upstream_redirect"


class RemoteAnswerTooLargeError(UpstreamError):
    """A replica's answer is larger than ``remote_max_answer_mib``: cut, never read whole."""

    code = "upstream_answer_too_large"


class HubError(LemonadeError):
    """The Hugging Face Hub answered a pull with something we cannot use."""

    status_code = 502
    error_type = "server_error"
    code = "hub_error"


class HubAuthError(HubError):
    """The hub wants a token (private, gated or missing repository) or refused ``HF_TOKEN``."""

    status_code = 401
    error_type = "authentication_error"
    code = "hub_unauthorized"


class HubAccessError(HubError):
    """The token is known but may not read the repository (gated: conditions not accepted)."""

    status_code = 403
    error_type = "permission_error"
    code = "hub_forbidden"


class HubNotFoundError(HubError):
    """The repository, revision or file of a checkpoint does not exist on the hub."""

    status_code = 404
    error_type = "invalid_request_error"
    code = "checkpoint_not_found"


class HubUnavailableError(HubError):
    """The hub cannot be reached (network down, ``HF_HUB_OFFLINE``) and the cache lacks it."""

    status_code = 503
    error_type = "service_unavailable"
    code = "hub_unavailable"


class UnverifiedSourceError(LemonadeError):
    """A curated model whose entry pins no file figures, asked of a hub other than the official
    one: nothing could tell its files from another model's, so the pull is refused up front."""

    status_code = 403
    error_type = "permission_error"
    code = "unverified_source"


class InsufficientStorageError(LemonadeError):
    """A pull does not fit on the disk of the download cache."""

    status_code = 507
    error_type = "server_error"
    code = "insufficient_storage"


class PullCancelledError(LemonadeError):
    """The pull was cancelled before it finished; nothing was registered."""

    status_code = 409
    error_type = "conflict_error"
    code = "pull_cancelled"


class QuotaExceededError(LemonadeError):
    """A node router's per-user quota refuses the request; nothing was changed.

    The body names the ``quota`` and its figures: ``limit``, ``used`` (what the user holds
    now) and ``requested`` (what this request adds), in the quota's unit."""

    status_code = 409
    error_type = "quota_exceeded_error"
    code = "quota_exceeded"

    def __init__(self, quota: str, message: str, *, limit: float, used: float,
                 requested: float, param: str | None = None) -> None:
        super().__init__(message, param=param, quota=quota, limit=limit, used=used,
                         requested=requested)
        self.quota = quota
        self.limit = limit
        self.used = used
        self.requested = requested


class TooManyRequestsError(QuotaExceededError):
    """A user already has as many requests in flight as a node allows one user.

    Refused at once (429) so that one notebook's batch cannot starve everyone else's;
    ``Retry-After`` says when to try again."""

    status_code = 429
    error_type = "rate_limit_error"

    def __init__(self, user: str, *, limit: int, used: int, retry_after_s: int = 1) -> None:
        super().__init__(
            "requests_in_flight",
            f"User '{user}' already has {used} request(s) in flight on this node, the most "
            f"one user may have (node_max_requests_per_user = {limit}). Retry later.",
            limit=limit, used=used, requested=1)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class ForbiddenError(LemonadeError):
    """A node router (one router for every user of a JupyterHub) refuses this caller."""

    status_code = 403
    error_type = "permission_error"
    code = "forbidden"


class MissingScopeError(ForbiddenError):
    """The caller's Hub token lacks the scope the request needs; the body names it."""

    code = "missing_scope"

    def __init__(self, scope: str, what: str) -> None:
        super().__init__(f"{what} needs the JupyterHub scope '{scope}'", scope=scope)


class LockedDownError(ForbiddenError):
    """A rule of the node's locked-down surface refuses the request; the body names it."""

    code = "locked_down"

    def __init__(self, rule: str, message: str, *, param: str | None = None) -> None:
        super().__init__(message, param=param, rule=rule)


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

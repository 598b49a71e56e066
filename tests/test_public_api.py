"""The public surface is pinned, and the layering holds: core imports no Jupyter."""

from __future__ import annotations

import subprocess
import sys

import lemonade_jupyter
from lemonade_jupyter import errors


def test_public_api_all_pinned() -> None:
    assert lemonade_jupyter.__all__ == [
        "__version__", "load_ipython_extension", "unload_ipython_extension",
        "openai_client", "async_openai_client",
    ]
    assert sorted(errors.__all__) == sorted([
        "LemonadeError", "InvalidRequestError", "ModelNotFoundError", "SlotsPinnedError",
        "UnsupportedAudioFormatError", "AudioTooLongError", "AudioTooLargeError",
        "InsufficientMemoryError", "CoolingDownError", "EngineMissingError", "ModelLoadError", "BackendShutdownError",
        "UpstreamError", "BackendTransportError", "RemoteUnreachableError", "RemoteTimeoutError",
        "RemoteLoopError", "RemoteRedirectError", "RemoteAnswerTooLargeError",
        "HubError", "HubAuthError", "HubAccessError",
        "HubNotFoundError", "HubUnavailableError", "UnverifiedSourceError",
        "InsufficientStorageError",
        "PullCancelledError", "QueueFullError", "ForbiddenError", "MissingScopeError",
        "LockedDownError", "QuotaExceededError", "TooManyRequestsError", "ClientError",
        "error_body",
    ])
    assert hasattr(lemonade_jupyter, "_jupyter_server_extension_points")


def _modules_after_import(module: str) -> set[str]:
    code = f"import sys, {module}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_public_api_core_imports_no_jupyter() -> None:
    loaded = _modules_after_import("lemonade_jupyter.core.router")
    jupyter = sorted(m for m in loaded if m.startswith(("jupyter", "ipykernel", "IPython")))
    assert not jupyter, f"the core imported {jupyter}"


def test_public_api_package_import_is_light() -> None:
    loaded = _modules_after_import("lemonade_jupyter")
    assert "lemonade_jupyter.core.router" not in loaded
    assert "jupyter_server" not in loaded
    assert "openai" not in loaded  # the OpenAI helpers import it only when called

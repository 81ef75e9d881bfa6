"""The Hugging Face hub, used only when asked for: a model id or the hub's GLUE. Offline, the local
cache is used without any request, so a missing file fails at once instead of after half a minute of
huggingface_hub's retries."""

from __future__ import annotations

import socket
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar
from urllib.parse import urlparse

from sweep.errors import UserError

T = TypeVar("T")


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the hub (``HF_ENDPOINT``) accepts a TCP connection within ``timeout_s`` seconds;
    False at once when ``HF_HUB_OFFLINE`` is set."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection(
            (url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=timeout_s
        ):
            return True
    except OSError:
        return False


@contextmanager
def offline() -> Iterator[None]:
    """huggingface_hub, transformers and datasets in offline mode (local cache only) for the block."""
    import datasets.config
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved


def from_hub(load: Callable[[], T], what: str, fix: str) -> T:
    """``load()`` something from the hub: online as usual, offline from the local cache only.

    Raises:
        UserError: offline and not cached, or the hub refused (one line naming ``what`` and ``fix``).
    """
    if hub_reachable():
        try:
            return load()
        except Exception as e:
            raise UserError(
                f"could not load {what} from the hub ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}); {fix}"
            ) from None
    with offline():
        try:
            return load()
        except Exception:
            raise UserError(
                f"{what} is not in the local Hugging Face cache and the hub cannot be reached (offline?); {fix}"
            ) from None

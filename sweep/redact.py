"""Secrets stay secret: the password of a ``sweep.storage`` URL (``postgresql://user:pw@host/db``, or
``?password=…``) is shown as ``***`` wherever a URL is printed, stored or written (the console, errors,
``config.yaml`` files, ``report.md``'s commands, the study's attributes); only the connection itself
uses the real URL (``sweep.study.storage_url``).

A URL without a password connects as PostgreSQL's own clients do: libpq (under psycopg) reads
``PGPASSWORD`` or ``~/.pgpass`` (``PGPASSFILE``), so the password need not be on the command line.
"""

from __future__ import annotations

import re
from typing import List, Optional, Sequence

from omegaconf import OmegaConf

#: what a password is shown as
MASK = "***"
#: the password of a URL's user part (``scheme://user:password@``, up to the last ``@`` of the word: an
#: unescaped ``@`` in it is still hidden) and of a ``password=`` query parameter
_SECRETS = (
    re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s]*:)[^\s]*@"),
    re.compile(r"(?P<head>[?&]password=)[^&#\s]*"),
)
#: a password shorter than this is not looked for in free text (it would mask letters of words)
_MIN_SECRET = 4


def mask_url(url: str) -> str:
    """``url``, or any text, with the password of every URL in it as ``***`` (``postgresql://u:***@h/db``,
    ``…?password=***``); text without one unchanged."""
    url = _SECRETS[0].sub(rf"\g<head>{MASK}@", url)
    return _SECRETS[1].sub(rf"\g<head>{MASK}", url)


def mask_text(text: str, url: Optional[str]) -> str:
    """``text`` (an error message, say) with URL passwords masked (``mask_url``), and the password of
    ``url``, decoded or as written, wherever else it appears."""
    from urllib.parse import quote

    from sqlalchemy.engine import make_url

    text = mask_url(text)
    try:
        u = make_url(url) if url else None
    except Exception:  # not a URL SQLAlchemy reads: nothing more to look for
        u = None
    query = u.query.get("password") if u is not None else None
    for secret in (u.password if u is not None else None, query if isinstance(query, str) else None):
        if secret and len(secret) >= _MIN_SECRET:
            text = text.replace(secret, MASK).replace(quote(secret, safe=""), MASK)
    return text


def masked_hint(url: str) -> str:
    """What to add to an error about ``url`` when its password is the mask itself (a printed command
    pasted as is): ``"; …"``, else ``""``."""
    if mask_url(url) != url or MASK not in url:
        return ""
    return (
        f"; the password {MASK} is how ranksweep's files and messages hide it: give the real one, or leave it out "
        "of the URL and set PGPASSWORD or ~/.pgpass"
    )


def without_password(url: str) -> str:
    """``url`` with no password at all (``postgresql://u@h/db``): what printed commands carry, so that they
    run as printed where libpq finds the password (``PGPASSWORD``, ``~/.pgpass``)."""
    url = _SECRETS[0].sub(lambda m: m.group("head")[:-1] + "@", url)  # the head ends with the user's ':'
    url = re.sub(r"([?&])password=[^&#\s]*&?", r"\1", url)
    return re.sub(r"[?&](?=$|#|\s)", "", url)


def command_overrides(overrides: Sequence[str]) -> List[str]:
    """Command-line overrides as a printed command carries them: ``sweep.storage``'s password left out
    (``without_password``), masked or not."""
    out = []
    for o in overrides:
        key, eq, value = o.partition("=")
        out.append(f"{key}={without_password(value)}" if eq and key.lstrip("+~") == "sweep.storage" else o)
    return out


def mask_overrides(overrides: Sequence[str]) -> List[str]:
    """Command-line overrides with the password of a ``sweep.storage=…`` URL masked (``mask_url``)."""
    out = []
    for o in overrides:
        key, eq, value = o.partition("=")
        out.append(f"{key}={mask_url(value)}" if eq and key.lstrip("+~") == "sweep.storage" else o)
    return out


def config_yaml(resolved) -> str:
    """The resolved config as written to ``config.yaml``, ``sweep.storage``'s password masked."""
    container = OmegaConf.to_container(resolved, resolve=True)
    storage = (container.get("sweep") or {}).get("storage")
    if storage:
        container["sweep"]["storage"] = mask_url(storage)
    return OmegaConf.to_yaml(container)

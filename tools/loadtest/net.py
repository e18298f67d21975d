"""URL checks for the bench: normalise the base URL, refuse non-loopback targets."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

_API_SUFFIXES = ("/v1/classify", "/v1/caption")


class UrlError(ValueError):
    """A URL the bench will not use; the message is one line."""


def is_loopback_host(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1 (names other than localhost are not resolved)."""
    host = host.strip("[]").lower()
    if host in ("localhost", "localhost.", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def base_url(url: str, allow_remote: bool = False) -> str:
    """`http(s)://host:port[/prefix]` without a trailing slash or an API path."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "https"):
        raise UrlError(f"{url}: only http:// and https:// URLs")
    if not parts.hostname:
        raise UrlError(f"{url}: no host")
    if not allow_remote and not is_loopback_host(parts.hostname):
        raise UrlError(f"{url}: not a loopback address; pass --allow-remote to load a remote "
                       "server (only with its owner's consent)")
    path = parts.path.rstrip("/")
    for suffix in _API_SUFFIXES:
        if path.endswith(suffix):
            path = path[: -len(suffix)]
    netloc = parts.netloc.rsplit("@", 1)[-1]  # never keep credentials in the URL
    return f"{parts.scheme}://{netloc}{path}"

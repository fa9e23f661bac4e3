"""The media policy: which hosts and addresses a worker may fetch task images from (issue 7).

Label Studio's own origin is always allowed (its address may be private: it is ours). Any other
host must be on MEDIA_ALLOW_HOSTS (exact names, `*.suffix`, or `*` for any), and its address must
be public unless MEDIA_ALLOW_PRIVATE is set: loopback, private, link-local, multicast, reserved
and unspecified ranges are refused. The name is resolved and checked before connecting, and the
address actually connected to is checked again (DNS rebinding), on every redirect hop too.
Refusals name the class of error, never what the remote answered.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from worker.labelstudio.errors import MediaRefused

__all__ = ["MediaPolicy", "peer_address", "socket_of"]


def _public(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_global and not addr.is_multicast


class MediaPolicy:
    """Decides which media URLs and peer addresses are allowed.

    Args:
        ls_url: LABEL_STUDIO_URL; its host (any address) is always allowed.
        allow_hosts: other host names: exact, `*.example.com` (subdomains), or `*` (any host).
        allow_private: also allow private, loopback and link-local addresses of other hosts.
    """

    def __init__(self, ls_url: str, allow_hosts: list[str], *, allow_private: bool) -> None:
        self.ls_host = (urlsplit(ls_url).hostname or "").lower()
        self.allow_hosts = [h.strip().lower() for h in allow_hosts if h.strip()]
        self.allow_private = allow_private

    def trusted(self, host: str) -> bool:
        """LS's own host: no address restriction."""
        return host.lower() == self.ls_host

    def _listed(self, host: str) -> bool:
        for pattern in self.allow_hosts:
            if pattern == "*" or host == pattern:
                return True
            if pattern.startswith("*.") and host.endswith(pattern[1:]):
                return True
        return False

    def check_url(self, url: str) -> str:
        """Check scheme and host of `url`; resolve it and check every address.

        Returns:
            The host name (lower case).

        Raises:
            MediaRefused: another scheme, a host not allowed, or a non-public address.
        """
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        if parts.scheme.lower() not in ("http", "https") or not host:
            raise MediaRefused("media URL refused: only http(s) URLs with a host")
        if self.trusted(host):
            return host
        if not self._listed(host):
            raise MediaRefused(f"media host {host} refused: not Label Studio nor allow-listed")
        try:
            infos = socket.getaddrinfo(host, parts.port or 443, proto=socket.IPPROTO_TCP)
        except (OSError, UnicodeError, ValueError):
            raise MediaRefused(f"media host {host}: name does not resolve") from None
        for info in infos:
            self.check_address(host, str(info[4][0]))
        return host

    def check_address(self, host: str, ip: str | None) -> None:
        """Check the address connected to for `host` (None: unknown, refused for other hosts).

        Raises:
            MediaRefused: a non-public address of a host other than Label Studio's.
        """
        if self.trusted(host) or self.allow_private:
            return
        if ip is None or not _public(ip):
            raise MediaRefused(f"media host {host} refused: private or local address")


def _private(obj: object, *path: str) -> object:
    """`obj.a.b...` along `path`, None where an attribute is missing."""
    for name in path:
        # urllib3 and http.client expose no public accessor to a response's socket: their
        # private attributes, read with a default since they may change between releases.
        obj = getattr(obj, name, None)
    return obj


def socket_of(raw: object) -> socket.socket | None:
    """The socket under a streamed urllib3 response (its peer address, and cutting a download at
    its deadline), or None when it cannot be told: urllib3 2's connection socket, else the one
    behind http.client's buffered reader."""
    sock = _private(raw, "_connection", "sock") or _private(raw, "_fp", "fp", "raw", "_sock")
    return sock if isinstance(sock, socket.socket) else None


def peer_address(raw: object) -> str | None:
    """The remote IP of a streamed urllib3 response, or None when it cannot be told."""
    sock = socket_of(raw)
    try:
        return str(sock.getpeername()[0]) if sock is not None else None
    except OSError:
        return None

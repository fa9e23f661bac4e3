"""The media policy: which origins and addresses a worker may fetch task images from (issues 7, 22).

Label Studio's own origin (scheme, host *and* port of LABEL_STUDIO_URL) is always allowed (its
address may be private: it is ours); another port of the same host is another origin. Any other
origin's host must be on MEDIA_ALLOW_HOSTS (exact names, `*.suffix`, or `*` for any), and its
address must be public unless MEDIA_ALLOW_PRIVATE is set: loopback, private, link-local,
multicast, reserved and unspecified ranges are refused, and so are IPv6 addresses that embed one
(IPv4-mapped, NAT64 `64:ff9b::/96` and `64:ff9b:1::/48`, 6to4, Teredo). The name is resolved and
checked before connecting, and the address actually connected to is checked again before
anything is sent (DNS rebinding; `worker.labelstudio.media_download`), on every redirect hop.
Refusals, like every other failure of an origin other than Label Studio's, are reported as one
generic class (`MediaRefused`, `GENERIC_REASON`): they never tell a closed port from a slow one
or a 404.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from worker.labelstudio.errors import MediaRefused

__all__ = ["GENERIC_REASON", "MediaPolicy", "origin_of"]

GENERIC_REASON = "refused or unreachable (only Label Studio's own origin is told apart)"
DEFAULT_PORTS = {"http": 80, "https": 443}
NAT64_WELL_KNOWN = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052: embeds an IPv4 address
NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215: local use, never public


def origin_of(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an http(s) URL, default ports filled in; None when it has none.

    Raises:
        MediaRefused: an invalid port.
    """
    parts = urlsplit(url)
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if scheme not in DEFAULT_PORTS or not host:
        return None
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError:
        raise MediaRefused(f"media URL {GENERIC_REASON}") from None
    return scheme, host, port


def resolve(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to (checked before connecting)."""
    return [str(info[4][0]) for info in socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)]


def _public(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address):
        if addr in NAT64_LOCAL:
            return False
        embedded = addr.ipv4_mapped or addr.sixtofour
        if addr in NAT64_WELL_KNOWN:
            embedded = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
        if addr.teredo is not None:
            embedded = addr.teredo[1]
        if embedded is not None:
            addr = embedded
    return addr.is_global and not addr.is_multicast


class MediaPolicy:
    """Decides which media URLs and peer addresses are allowed.

    Args:
        ls_url: LABEL_STUDIO_URL; its origin (scheme, host, port: any address) is always allowed.
        allow_hosts: other host names: exact, `*.example.com` (subdomains), or `*` (any host).
        allow_private: also allow private, loopback and link-local addresses of other origins.
    """

    def __init__(self, ls_url: str, allow_hosts: list[str], *, allow_private: bool) -> None:
        self.ls_origin = origin_of(ls_url)
        self.allow_hosts = [h.strip().lower() for h in allow_hosts if h.strip()]
        self.allow_private = allow_private

    def trusted(self, url: str) -> bool:
        """Label Studio's own origin (same scheme, host and port): no address restriction."""
        try:
            return self.ls_origin is not None and origin_of(url) == self.ls_origin
        except MediaRefused:
            return False

    def _listed(self, host: str) -> bool:
        for pattern in self.allow_hosts:
            if pattern == "*" or host == pattern:
                return True
            if pattern.startswith("*.") and host.endswith(pattern[1:]):
                return True
        return False

    def check_url(self, url: str) -> str:
        """Check scheme, host and port of `url`; resolve it and check every address.

        Returns:
            The host name (lower case).

        Raises:
            MediaRefused: another scheme, an origin not allowed, or a non-public address (all
                with the same generic reason).
        """
        origin = origin_of(url)
        if origin is None:
            raise MediaRefused(f"media URL {GENERIC_REASON}")
        _, host, port = origin
        if self.trusted(url):
            return host
        if not self._listed(host):
            raise MediaRefused(f"media URL {GENERIC_REASON}")
        try:
            addresses = resolve(host, port)
        except (OSError, UnicodeError, ValueError):
            raise MediaRefused(f"media URL {GENERIC_REASON}") from None
        for ip in addresses:
            self.check_address(host, ip)
        return host

    def check_address(self, host: str, ip: str | None) -> None:
        """Check an address of `host`, an origin other than Label Studio's (None: unknown).

        Raises:
            MediaRefused: a non-public address (unless MEDIA_ALLOW_PRIVATE), or an unknown one.
        """
        if self.allow_private:
            return
        if ip is None or not _public(ip):
            raise MediaRefused(f"media URL {GENERIC_REASON}")

"""The address guard: catalogue URLs must not steer workers at internal hosts.

A pipeline inside a cloud network can reach the metadata server
(169.254.169.254), private services and loopback. Catalogue URLs come from
outside, so by default only globally routable addresses are fetched. The host
is checked twice: after DNS resolution, to give a clear reason early, and on
the socket's actual peer address when a connection opens, which also catches
DNS rebinding and every redirect hop. IPv6 addresses that lead to an IPv4
host (NAT64, 6to4, IPv4-compatible, -mapped or -translated, Teredo) are
judged by that host's address as well, and site-local IPv6 is refused.

The same connection classes tie each connection to the download using it
(see imgsim.fetch.deadline), so a download's deadline can end its socket.
"""
from __future__ import annotations

import ipaddress
import socket
from typing import Callable, Iterable, Optional
from urllib.parse import urlsplit

from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from imgsim.failures import StageError

ALLOWED_SCHEMES = ("http", "https")


def split_url(url) -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) URL, or StageError invalid_url / unsupported_scheme."""
    if not isinstance(url, str) or not url.strip():
        raise StageError("invalid_url", "empty URL")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as e:
        raise StageError("invalid_url", str(e)) from None
    scheme = parts.scheme.lower()
    if not scheme:
        raise StageError("invalid_url", f"no scheme in {url[:200]!r}")
    if scheme not in ALLOWED_SCHEMES:
        raise StageError("unsupported_scheme", f"{scheme}:// is not fetched")
    if not parts.hostname:
        raise StageError("invalid_url", f"no host in {url[:200]!r}")
    return scheme, parts.hostname, port or (443 if scheme == "https" else 80)


# The NAT64 well-known prefix (RFC 6052): 64:ff9b::a.b.c.d reaches the IPv4 host a.b.c.d.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# The local-use NAT64 prefix (RFC 8215): not globally reachable, whatever it embeds.
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
# IPv4-translated addresses (SIIT, RFC 6145): ::ffff:0:a.b.c.d is translated to a.b.c.d.
_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")


def is_blocked(address: str) -> bool:
    """True for addresses that are not globally routable (or are multicast).

    An IPv6 address that carries an IPv4 address to reach (IPv4-mapped,
    IPv4-compatible, NAT64, 6to4, Teredo's client) is judged by that IPv4
    address too: 64:ff9b::7f00:1 or 2002:7f00:1:: reach loopback, though the
    IPv6 prefixes themselves are global."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _NAT64_LOCAL:
            return True
        if ip.ipv4_mapped is not None:  # ::ffff:a.b.c.d is a.b.c.d on a dual-stack socket
            return _not_public(ip.ipv4_mapped)
        embedded = embedded_ipv4(ip)
        if embedded is not None and _not_public(embedded):
            return True
    return _not_public(ip)


def embedded_ipv4(ip: ipaddress.IPv6Address) -> Optional[ipaddress.IPv4Address]:
    """The IPv4 address an IPv6 address leads to, for the transition formats that embed one."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:  # 2002:AABB:CCDD::/48
        return ip.sixtofour
    if ip.teredo is not None:  # 2001:0::/32: (server, client); the client is where packets go
        return ip.teredo[1]
    if ip in _NAT64 or ip in _TRANSLATED or int(ip) >> 32 == 0:  # NAT64, SIIT, IPv4-compatible ::a.b.c.d
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _not_public(ip) -> bool:
    # site-local fec0::/10 is deprecated (RFC 3879) but still routed inside some networks, and
    # Python counts it as global
    return (not ip.is_global) or ip.is_multicast or (ip.version == 6 and ip.is_site_local)


def resolve(host: str, port: int) -> list[str]:
    """The host's addresses; StageError dns_error when it does not resolve."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise StageError("dns_error", f"{host}: {e.strerror or e}") from None
    except UnicodeError as e:
        raise StageError("invalid_url", f"bad host name {host!r}: {e}") from None
    return sorted({info[4][0] for info in infos})


def check_addresses(host: str, addresses: Iterable[str]) -> None:
    blocked = [a for a in addresses if is_blocked(a)]
    if blocked:
        raise StageError(
            "blocked_address",
            f"{host} resolves to {blocked[0]}, which is not a public address "
            "(--allow-private-addresses lifts this)")


class BlockedPeer(Exception):
    """A connection reached a non-public peer; fetch maps it to blocked_address.

    Deliberately not an OSError, so that urllib3 does not wrap it as a
    retryable connection error."""


def guarded_pool_classes(allowed: Callable[[str], bool],
                         attach: Callable[[object], None] = lambda connection: None) -> dict:
    """urllib3 pool classes whose connections verify the connected peer address.

    The check runs in `connect()` (urllib3's public connection method), after
    the socket is connected and before any request byte is sent. `attach(connection)`
    is called before a connection connects, once it is connected (urllib3 resolves
    the name again while connecting, and the download's deadline may pass
    meanwhile: attach then raises) and before it sends each request (a pooled
    connection is reused without connecting again), so the fetcher can tie the
    connection to the download using it (imgsim.fetch.deadline)."""

    def check(connection) -> None:
        peer = connection.sock.getpeername()[0]
        if not allowed(peer):
            connection.close()
            raise BlockedPeer(f"{connection.host} connected to {peer}, which is not a public address")

    class GuardedHTTPConnection(HTTPConnection):
        imgsim_download = None  # the download using this connection now (imgsim.fetch.deadline)

        def connect(self):
            attach(self)
            super().connect()
            check(self)
            attach(self)

        def request(self, *args, **kwargs):
            attach(self)
            return super().request(*args, **kwargs)

    class GuardedHTTPSConnection(HTTPSConnection):
        imgsim_download = None

        def connect(self):
            attach(self)
            super().connect()
            check(self)
            attach(self)

        def request(self, *args, **kwargs):
            attach(self)
            return super().request(*args, **kwargs)

    class GuardedHTTPPool(HTTPConnectionPool):
        ConnectionCls = GuardedHTTPConnection

    class GuardedHTTPSPool(HTTPSConnectionPool):
        ConnectionCls = GuardedHTTPSConnection

    return {"http": GuardedHTTPPool, "https": GuardedHTTPSPool}

"""The admin API (twisted.web): sessions as JSON or text, metrics.

GET /sessions      JSON list of live sessions (vpnaaa.sessions)
GET /sessions.txt  the same for people (`vpnaaa sessions`)
POST /disconnect  end a user's sessions or one session (`vpnaaa disconnect`)
GET|POST /keylog   whether keys for Wireshark are logged; ?state=on|off switches (`vpnaaa keylog`)
GET|POST /deny     the certificate serials refused (vpnaaa.certs.DenyList in the state
                   directory); ?serial=HEX denies one and ends its live IKE sessions,
                   &remove=1 allows it again (`vpnaaa deny`)
GET /metrics       Prometheus text format (prometheus-client, vpnaaa.metrics): sessions,
                   IKE exchanges, EAP outcomes, RADIUS requests, pools, traffic, ...

It listens on a UNIX socket in the state directory, mode 0600 and owned by the daemon user,
so only that user and root reach it (`vpnaaa sessions`); on TCP only when ``[admin] listen``
is set, and then every request must carry ``Authorization: Bearer <token>`` (RFC 6750 §2.1)
with the token of ``[admin] token_file``, or gets 401.
"""

from __future__ import annotations

import hmac
import json
import re
from typing import Any

from twisted.application import internet, service
from twisted.internet import address
from twisted.web import resource, server
from twisted.web.server import NOT_DONE_YET

from vpnaaa import sessions
from vpnaaa.certs import DenyList, parse_serial, serial_hex
from vpnaaa.config import AdminConfig
from vpnaaa.keylog import KeyLogError
from vpnaaa.radius.dae import same_account


class _Sessions(resource.Resource):
    isLeaf = True

    def __init__(self, daemon: Any, text: bool) -> None:
        super().__init__()
        self.daemon = daemon
        self.text = text

    def render_GET(self, request: server.Request) -> Any:
        ike = self.daemon.ike
        d = sessions.snapshot(ike.responder) if ike is not None else None

        def write(found: list[dict[str, Any]]) -> None:
            if self.text:
                request.setHeader(b"content-type", b"text/plain; charset=utf-8")
                request.write((sessions.render(found) + "\n").encode())
            else:
                request.setHeader(b"content-type", b"application/json")
                request.write(json.dumps(found, indent=1).encode())
            request.finish()

        if d is None:
            write([])
            return NOT_DONE_YET
        d.addCallback(write)
        d.addErrback(
            lambda failure: (
                request.setResponseCode(500),
                request.write(failure.getErrorMessage().encode()),
                request.finish(),
            )
        )
        return NOT_DONE_YET


class _Disconnect(resource.Resource):
    """POST /disconnect?who=USER-OR-SESSION-ID: end those sessions (Admin-Reset): each
    client gets a DELETE (RFC 7296 §1.4.1). A session id is 16 hex digits (Acct-Session-Id);
    anything else names a user, in any case: a bare name that user in every domain, a
    DOMAIN\\user only that account where the session's name has a domain (an AAA
    server's CORPA\\bob is not CORPB\\bob, as a Disconnect-Request's User-Name matches)."""

    isLeaf = True

    def __init__(self, daemon: Any) -> None:
        super().__init__()
        self.daemon = daemon

    def render_POST(self, request: server.Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        who = (request.args.get(b"who") or [b""])[0].decode("utf-8", "replace").strip()
        ike = self.daemon.ike
        if not who or ike is None:
            request.setResponseCode(400)
            return b"name a user or a session id (who=...)\n" if who else b"no IKE service\n"
        responder = ike.responder
        found = responder.find(session_id=who) if _SESSION_ID.fullmatch(who) else []
        if not found:
            found = responder.find(user=who)
            if "\\" in who:
                found = [sa for sa in found if same_account(who, sa.identity)]
        if not found:
            request.setResponseCode(404)
            return f"no live session of {who}\n".encode()
        for sa in found:
            responder.disconnect(sa, "by the administrator (admin API)")
        names = ", ".join(f"{sa.session_id} ({sa.identity})" for sa in found)
        return f"disconnecting {len(found)} session(s): {names}\n".encode()


_SESSION_ID = re.compile(r"[0-9A-Fa-f]{16}")


class _KeyLog(resource.Resource):
    """GET /keylog: whether keys for Wireshark are logged (:mod:`vpnaaa.keylog`);
    POST /keylog?state=on|off switches it (a warning in the daemon's log either way)."""

    isLeaf = True

    def __init__(self, daemon: Any) -> None:
        super().__init__()
        self.daemon = daemon

    def render_GET(self, request: server.Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        keylog = self.daemon.keylog
        state = "on" if keylog.enabled else "off"
        return f"Wireshark key log {state} ({keylog.directory})\n".encode()

    def render_POST(self, request: server.Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        state = (request.args.get(b"state") or [b""])[0]
        if state not in (b"on", b"off"):
            request.setResponseCode(400)
            return b"state=on or state=off\n"
        try:
            text = self.daemon.switch_keylog(state == b"on", "by the administrator (admin API)")
        except KeyLogError as e:
            request.setResponseCode(409)
            return f"cannot switch the key log on: {e}\n".encode()
        return f"{text}\n".encode()


class _Deny(resource.Resource):
    """GET /deny: the denied serials, one a line. POST /deny?serial=HEX: refuse that
    certificate serial from the next authentication on (&remove=1: allow it again), and
    end the live IKE sessions authenticated with it (Admin-Reset: a DELETE to each client,
    RFC 7296 §1.4.1)."""

    isLeaf = True

    def __init__(self, daemon: Any) -> None:
        super().__init__()
        self.daemon = daemon
        self.deny: DenyList = daemon.deny

    def render_GET(self, request: server.Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return "".join(f"{serial}\n" for serial in self.deny.serials()).encode()

    def render_POST(self, request: server.Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        text = (request.args.get(b"serial") or [b""])[0].decode("utf-8", "replace")
        try:
            serial = parse_serial(text)
        except ValueError as e:
            request.setResponseCode(400)
            return f"{e}\n".encode()
        shown = serial_hex(serial)
        try:
            if request.args.get(b"remove") == [b"1"]:
                done = self.deny.remove(serial)
                return f"serial {shown} {'allowed again' if done else 'was not denied'}\n".encode()
            done = self.deny.add(serial)
        except OSError as e:
            request.setResponseCode(500)
            return f"cannot write {self.deny.path}: {e.strerror}\n".encode()
        said = "denied" if done else "was already denied"
        ike = self.daemon.ike
        found = ike.responder.find(serial=shown) if ike is not None else []
        for sa in found:
            ike.responder.disconnect(sa, f"by the administrator (serial {shown} denied)")
        names = "".join(f", {sa.session_id} ({sa.identity})" for sa in found)
        return f"serial {shown} {said}; {len(found)} live session(s) ended{names}\n".encode()


class _UnixRequest(server.Request):
    """A request on the UNIX socket. WSGI (prometheus-client's MetricsResource) wants the
    peer's and our host and port (PEP 3333 REMOTE_ADDR, SERVER_PORT), which a UNIX socket
    has not: its peers are local, so both are the loopback address."""

    def getClientAddress(self) -> address.IPv4Address:
        return _LOCAL

    def getHost(self) -> address.IPv4Address:
        return _LOCAL


_LOCAL = address.IPv4Address("TCP", "127.0.0.1", 0)


class _Bearer(resource.Resource):
    """Lets a request through to ``protected`` only with the right bearer token (RFC 6750
    §2.1, compared in constant time); 401 with ``WWW-Authenticate: Bearer`` (§3) otherwise."""

    def __init__(self, protected: resource.Resource, token: bytes) -> None:
        super().__init__()
        self.protected = protected
        self.expected = b"Bearer " + token

    def getChildWithDefault(self, path: bytes, request: server.Request) -> resource.IResource:
        given = request.getHeader(b"authorization") or b""
        if not hmac.compare_digest(given, self.expected):
            request.setHeader(b"www-authenticate", b'Bearer realm="vpnaaa"')
            return resource.ErrorPage(401, "Unauthorized", "a valid bearer token is required")
        return self.protected.getChildWithDefault(path, request)


def _site(root: resource.Resource, unix: bool = False) -> server.Site:
    site = server.Site(root, requestFactory=_UnixRequest if unix else server.Request)
    site.noisy = False
    return site


def admin_services(daemon: Any, config: AdminConfig) -> list[service.Service]:
    """The admin API on the UNIX socket and, when configured, on TCP behind the token."""
    # prometheus-client's Twisted resource imports the global reactor: only once it is chosen
    from prometheus_client.twisted import MetricsResource

    root = resource.Resource()
    root.putChild(b"sessions", _Sessions(daemon, text=False))
    root.putChild(b"sessions.txt", _Sessions(daemon, text=True))
    root.putChild(b"metrics", MetricsResource(daemon.metrics.registry))
    root.putChild(b"disconnect", _Disconnect(daemon))
    root.putChild(b"keylog", _KeyLog(daemon))
    root.putChild(b"deny", _Deny(daemon))
    found: list[service.Service] = []
    if config.socket is not None:
        unix = internet.UNIXServer(
            str(config.socket), _site(root, unix=True), mode=0o600, wantPID=True
        )
        unix.setName("admin")
        found.append(unix)
    if config.listen is not None:
        assert config.token is not None
        guarded = _site(_Bearer(root, config.token))
        tcp = internet.TCPServer(config.port, guarded, interface=config.listen)
        tcp.setName("admin-tcp")
        found.append(tcp)
    return found

"""The admin API (twisted.web, loopback by default): sessions as JSON or text, metrics.

GET /sessions      JSON list of live sessions (vpnaaa.sessions)
GET /sessions.txt  the same for people (`vpnaaa sessions`)
GET /metrics       Prometheus text format: sessions, pool use, live EAP conversations
"""

from __future__ import annotations

import json
from typing import Any

from twisted.application import internet
from twisted.web import resource, server
from twisted.web.server import NOT_DONE_YET

from vpnaaa import sessions


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


class _Metrics(resource.Resource):
    isLeaf = True

    def __init__(self, daemon: Any) -> None:
        super().__init__()
        self.daemon = daemon

    def render_GET(self, request: server.Request) -> bytes:
        lines = []

        def gauge(name: str, value: int, text: str) -> None:
            lines.extend([f"# HELP {name} {text}", f"# TYPE {name} gauge", f"{name} {value}"])

        ike = self.daemon.ike
        if ike is not None:
            responder = ike.responder
            established = sum(1 for sa in responder.sas.values() if sa.established_at)
            gauge("vpnaaa_ike_sas", len(responder.sas), "IKE SAs, half-open included")
            gauge("vpnaaa_sessions", established, "established IKE SAs")
            pools = [profile.pool for profile in responder.context.profiles]
            gauge("vpnaaa_pool_leased", sum(p.leased for p in pools), "virtual IPs leased")
            gauge("vpnaaa_pool_free", sum(p.free for p in pools), "virtual IPs free")
        if self.daemon.eap is not None:
            gauge(
                "vpnaaa_eap_conversations",
                len(self.daemon.eap),
                "live EAP conversations of the RADIUS server",
            )
        request.setHeader(b"content-type", b"text/plain; version=0.0.4")
        return ("\n".join(lines) + "\n").encode()


def admin_service(daemon: Any, listen: str, port: int) -> internet.TCPServer:
    root = resource.Resource()
    root.putChild(b"sessions", _Sessions(daemon, text=False))
    root.putChild(b"sessions.txt", _Sessions(daemon, text=True))
    root.putChild(b"metrics", _Metrics(daemon))
    site = server.Site(root)
    site.noisy = False
    return internet.TCPServer(port, site, interface=listen)

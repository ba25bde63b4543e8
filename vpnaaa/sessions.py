"""Live VPN sessions: what `show vpn-sessiondb detail` shows on an ASA, as JSON and text.

A session is an ESTABLISHED IKE SA: who, from where, which virtual IP, since when, with
which algorithms, and its CHILD_SAs with the kernel's byte and packet counters when the
kernel installer holds them.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet import defer

from vpnaaa.ike.protocol import Responder
from vpnaaa.ike.sa import IkeSa, State
from vpnaaa.kernel.installer import ChildSaSpec


def _child(spec: ChildSaSpec, counters: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "reqid": spec.reqid,
        "spi_in": f"{spec.inbound_spi:08x}",
        "spi_out": f"{spec.outbound_spi:08x}",
        "local_ts": [str(s.network) for s in spec.local_selectors],
        "remote_ts": [str(s.network) for s in spec.remote_selectors],
        "udp_encapsulation": spec.encapsulation is not None,
    }
    if counters is not None:
        entry["bytes_in"] = counters.inbound.bytes
        entry["packets_in"] = counters.inbound.packets
        entry["bytes_out"] = counters.outbound.bytes
        entry["packets_out"] = counters.outbound.packets
    return entry


async def _session(responder: Responder, sa: IkeSa, now: float) -> dict[str, Any]:
    choice = sa.ike_choice
    counters_of = getattr(responder.installer, "counters", None)
    children = []
    for child in sa.children.values():
        counters = None
        if counters_of is not None:
            try:
                counters = await counters_of(child.spec)
            except OSError:
                counters = None
        entry = _child(child.spec, counters)
        entry["encryption"] = child.choice.encr.name
        entry["integrity"] = child.choice.integ.name if child.choice.integ else None
        children.append(entry)
    return {
        "session_id": sa.session_id,
        "username": sa.identity,
        "profile": sa.profile.name,
        "peer": f"{sa.remote.host}:{sa.remote.port}",
        "virtual_ip": str(sa.virtual_ip) if sa.virtual_ip else None,
        "ike_spis": f"{sa.spi_i.hex()}/{sa.spi_r.hex()}",
        "nat_t": sa.nat_detected,
        "duration": round(now - sa.established_at) if sa.established_at else None,
        "ike": {
            "encryption": choice.encr.name if choice else None,
            "integrity": choice.integ.name if choice and choice.integ else None,
            "prf": choice.prf.name if choice and choice.prf else None,
            "group": choice.dh.name if choice and choice.dh else None,
        },
        "child_sas": children,
        "weak_algorithms": list(sa.weak_algorithms),
        "certificate": (
            {"subject": sa.certificate.subject, "serial": sa.certificate.serial}
            if sa.certificate is not None
            else None
        ),
    }


def snapshot(responder: Responder) -> defer.Deferred[list[dict[str, Any]]]:
    """Every established session, with kernel counters where there are any."""

    async def collect() -> list[dict[str, Any]]:
        now = responder.clock.seconds()
        established = [  # an SA rekeyed away (or a redundant one) is not a session of its own
            sa for sa in responder.sas.values() if sa.state == State.ESTABLISHED and not sa.rekeyed
        ]
        return [await _session(responder, sa, now) for sa in established]

    return defer.Deferred.fromCoroutine(collect())


def render(sessions: list[dict[str, Any]]) -> str:
    """A human view, one block per session."""
    if not sessions:
        return "no active sessions"
    blocks = []
    for n, s in enumerate(sessions, 1):
        lines = [
            f"Session {n}: {s['username']} ({s['profile']}) from {s['peer']}, "
            f"assigned {s['virtual_ip']}",
            f"  session {s['session_id']}, IKE SPIs {s['ike_spis']}, up {s['duration']} s, "
            f"NAT-T {s['nat_t']}",
            "  IKE " + "/".join(str(v) for v in s["ike"].values() if v),
        ]
        if s.get("certificate"):
            cert = s["certificate"]
            lines.append(f"  certificate {cert['subject']}, serial {cert['serial']}")
        if s["weak_algorithms"]:
            lines.append("  WEAK algorithms: " + ", ".join(s["weak_algorithms"]))
        for c in s["child_sas"]:
            traffic = ""
            if "bytes_in" in c:
                traffic = (
                    f", in {c['bytes_in']} B/{c['packets_in']} pkts, "
                    f"out {c['bytes_out']} B/{c['packets_out']} pkts"
                )
            lines.append(
                f"  ESP {c['spi_in']}/{c['spi_out']} {c['encryption']}"
                f"{'/' + c['integrity'] if c['integrity'] else ''} "
                f"{','.join(c['local_ts'])} === {','.join(c['remote_ts'])}{traffic}"
            )
        blocks.append("\n".join(lines))
    return "\n".join(blocks) + f"\n{len(sessions)} session(s) at {time.strftime('%H:%M:%S')}"

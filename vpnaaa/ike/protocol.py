"""The IKEv2 responder's UDP edge: ports 500 and 4500, dispatch by SPI, the EAP backend
and the CHILD_SA installer (RFC 7296 §2, RFC 3948 §2.2 for port 4500).

On port 4500 IKE messages follow a four-octet zero non-ESP marker; a single 0xFF octet is
a NAT keepalive (RFC 3948 §2.3); anything else is ESP, which belongs to the kernel.
Responses leave from the socket and to the address the request came from.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import os
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.python.failure import Failure

from vpnaaa import logs
from vpnaaa.ike.const import ExchangeType, HeaderFlag, NotifyType, PayloadType
from vpnaaa.ike.message import (
    HEADER,
    Header,
    IkeError,
    Message,
    Nonce,
    Notify,
    decode_message,
    describe,
    encode_message,
)
from vpnaaa.ike.sa import (
    Endpoint,
    IkeSa,
    Outcome,
    ResponderContext,
    State,
    local_address_towards,
)
from vpnaaa.kernel.installer import ChildSaInstaller, ChildSaSpec
from vpnaaa.kernel.xfrm_installer import ExpireEvent

log = logs.get("vpnaaa.ike")

NON_ESP_MARKER = b"\x00\x00\x00\x00"
NAT_KEEPALIVE = b"\xff"
TRANSIENT_ERRORS = {errno.ENOBUFS, errno.EAGAIN, errno.EINTR, errno.ENOMEM}
HALF_OPEN_TIMEOUT = 30.0  # seconds an SA may take to finish IKE_AUTH (EAP included)


class Responder:
    """All IKE SAs of the gateway, keyed by our SPI; half-open ones also by the
    initiator's SPI and address, so a retransmitted IKE_SA_INIT finds its SA."""

    def __init__(
        self,
        context: ResponderContext,
        installer: ChildSaInstaller,
        clock: IReactorTime,
        listen: str,
        cookie_threshold: int = 500,
    ) -> None:
        self.context = context
        self.installer = installer
        self.cookie_threshold = cookie_threshold
        self._cookie_secret = os.urandom(32)
        self.clock = clock
        self.listen = listen
        self.sas: dict[bytes, IkeSa] = {}
        self._by_initiator: dict[tuple[str, int, bytes], IkeSa] = {}
        self._timers: dict[bytes, Any] = {}

    def receive(self, data: bytes, remote: Endpoint, port: IkePort) -> None:
        try:
            message = decode_message(data)
        except IkeError as e:
            log.warn(
                "dropped {n}-octet datagram from {host}:{port}: {reason}",
                n=len(data),
                host=remote.host,
                port=remote.port,
                reason=str(e),
            )
            self._refuse_unsupported(data, e, remote, port)
            return
        header = message.header
        if logs.debug_enabled():
            log.debug(
                "received {what} from {host}:{port}",
                what=describe(message),
                host=remote.host,
                port=remote.port,
            )
        sa = self._find(header, remote)
        if sa is None:
            if (
                header.exchange != ExchangeType.IKE_SA_INIT
                or header.response
                or (header.message_id != 0)
            ):
                log.info(
                    "dropped {exchange} from {host}:{port}: no IKE SA {spi}",
                    exchange=header.exchange,
                    host=remote.host,
                    port=remote.port,
                    spi=header.spi_r.hex(),
                )
                return
            if not self._cookie_ok(message, remote, port):
                return
            sa = self._new_sa(header, remote, port)
        self._run(sa, sa.receive(message, data, remote, port))

    def _cookie(self, message: Message, remote: Endpoint) -> bytes:
        """RFC 7296 §2.6: a stateless cookie, Hash(Ni | IPi | SPIi | secret)."""
        nonce = message.get(PayloadType.NONCE)
        ni = nonce.data if isinstance(nonce, Nonce) else b""
        material = ni + remote.packed() + message.header.spi_i + self._cookie_secret
        return hashlib.sha256(material).digest()

    def _cookie_ok(self, message: Message, remote: Endpoint, port: IkePort) -> bool:
        """Above ``cookie_threshold`` half-open SAs, a new IKE_SA_INIT must return the
        cookie we hand out (§2.6), so a flood of spoofed requests costs no state or DH."""
        if len(self._by_initiator) < self.cookie_threshold:
            return True
        offered = message.notify(NotifyType.COOKIE)
        expected = self._cookie(message, remote)
        if offered is not None and hmac.compare_digest(offered.data, expected):
            return True
        reply = Header(
            message.header.spi_i, bytes(8), ExchangeType.IKE_SA_INIT, HeaderFlag.RESPONSE, 0
        )
        notify = Notify(NotifyType.COOKIE, expected)
        port.send(encode_message(reply, [(PayloadType.NOTIFY, notify)]), remote)
        return False

    @staticmethod
    def _refuse_unsupported(data: bytes, error: IkeError, remote: Endpoint, port: IkePort) -> None:
        """An IKE_SA_INIT request with an unknown critical payload gets the notify (§2.5);
        anything else malformed before keys exist is dropped (§2.21.1)."""
        if error.notify != NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD or len(data) < HEADER.size:
            return
        header = Header.decode(data)
        if header.exchange != ExchangeType.IKE_SA_INIT or header.response:
            return
        reply = Header(
            header.spi_i, bytes(8), header.exchange, HeaderFlag.RESPONSE, header.message_id
        )
        notify = Notify(NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD, error.data)
        port.send(encode_message(reply, [(PayloadType.NOTIFY, notify)]), remote)

    def _find(self, header: Header, remote: Endpoint) -> IkeSa | None:
        if header.spi_r == bytes(8):
            return self._by_initiator.get((remote.host, remote.port, header.spi_i))
        sa = self.sas.get(header.spi_r)
        return sa if sa is not None and sa.spi_i == header.spi_i else None

    def _new_sa(self, header: Header, remote: Endpoint, port: IkePort) -> IkeSa:
        local_host = self.listen
        if local_host in ("0.0.0.0", "::"):
            local_host = local_address_towards(remote)
        sa = IkeSa(self.context, header.spi_i, Endpoint(local_host, port.number), remote)
        sa.port = port
        self.sas[sa.spi_r] = sa
        self._by_initiator[(remote.host, remote.port, header.spi_i)] = sa
        self._timers[sa.spi_r] = self.clock.callLater(HALF_OPEN_TIMEOUT, self._half_open, sa)
        return sa

    def _half_open(self, sa: IkeSa) -> None:
        self._timers.pop(sa.spi_r, None)
        if sa.state != State.ESTABLISHED:
            log.info(
                "{sa}: removed: not established within {t:.0f} s", sa=sa.name, t=HALF_OPEN_TIMEOUT
            )
            self._run(sa, sa.close())

    def _run(self, sa: IkeSa, outcome: Outcome) -> None:
        port, remote = sa.port, sa.remote
        if outcome.reply_to is not None:
            remote, port = outcome.reply_to
        for datagram in outcome.send:
            port.send(datagram, remote)
        for spec in outcome.remove:
            self._remove_child(sa, spec)
        if outcome.successor is not None:
            self.sas[outcome.successor.spi_r] = outcome.successor
        if outcome.closed:
            self._forget(sa)
            return
        if outcome.eap is not None:
            d = sa.profile.eap.step(sa.eap_conversation, outcome.eap)
            d.addCallback(lambda step: self._run(sa, sa.eap_result(*step)))
            d.addErrback(self._internal_error, sa)
        elif outcome.install is not None:
            self._install(sa, outcome.install)
        if sa.state == State.ESTABLISHED and sa.spi_r in self._timers:
            sa.established_at = self.clock.seconds()
            self._timers.pop(sa.spi_r).cancel()
            self._by_initiator.pop((sa.remote.host, sa.remote.port, sa.spi_i), None)

    def _install(self, sa: IkeSa, spec: ChildSaSpec) -> None:
        def done(_: object) -> None:
            self._run(sa, sa.child_installed(spec, None))

        def failed(failure: Failure) -> None:
            transient = getattr(failure.value, "errno", None) in TRANSIENT_ERRORS
            self._run(sa, sa.child_installed(spec, failure.getErrorMessage(), transient))

        self.installer.install(spec).addCallbacks(done, failed).addErrback(self._internal_error, sa)

    def _remove_child(self, sa: IkeSa, spec: ChildSaSpec) -> None:
        def failed(failure: Failure) -> None:
            log.error(
                "{sa}: CHILD_SA {spi:08x} not removed: {error}",
                sa=sa.name,
                spi=spec.inbound_spi,
                error=failure.getErrorMessage(),
            )

        self.installer.remove(spec).addErrback(failed)

    def _forget(self, sa: IkeSa) -> None:
        self.sas.pop(sa.spi_r, None)
        if sa.eap_conversation is not None and sa.profile.eap is not None:
            sa.profile.eap.forget(sa.eap_conversation)
        self._by_initiator = {k: v for k, v in self._by_initiator.items() if v is not sa}
        timer = self._timers.pop(sa.spi_r, None)
        if timer is not None and timer.active():
            timer.cancel()

    def _internal_error(self, failure: Failure, sa: IkeSa) -> None:
        log.failure("{sa}: internal error; IKE SA removed", failure, sa=sa.name)
        self._run(sa, sa.close())

    def expired(self, event: ExpireEvent) -> None:
        """The kernel says a CHILD_SA reached a lifetime limit. Soft: clients rekey on
        their own schedule, so it is logged. Hard: the kernel dropped that SA; the rest of
        the CHILD_SA (the other direction, the policies) goes too."""
        for sa in self.sas.values():
            child = sa.children.get(event.spec.inbound_spi)
            if child is None:
                continue
            direction = "inbound" if event.inbound else "outbound"
            if not event.hard:
                log.info(
                    "{sa}: CHILD_SA {spi:08x} {direction} soft lifetime reached",
                    sa=sa.name,
                    spi=event.spec.inbound_spi,
                    direction=direction,
                )
                return
            log.info(
                "{sa}: CHILD_SA {spi:08x} {direction} hard lifetime reached; removed",
                sa=sa.name,
                spi=event.spec.inbound_spi,
                direction=direction,
            )
            del sa.children[event.spec.inbound_spi]
            self._remove_child(sa, child.spec)
            return

    def shutdown(self) -> None:
        """Remove every CHILD_SA we installed (stopping the daemon)."""
        for sa in list(self.sas.values()):
            self._run(sa, sa.close())


class IkePort(DatagramProtocol):
    """UDP 500 (plain IKE) or 4500 (IKE after the non-ESP marker, NAT-T)."""

    noisy = False

    def __init__(self, responder: Responder, number: int, nat_t: bool) -> None:
        self.responder = responder
        self.number = number
        self.nat_t = nat_t

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.nat_t:
            if data == NAT_KEEPALIVE:
                return
            if not data.startswith(NON_ESP_MARKER):
                return  # ESP in UDP reaching userspace: the kernel has no SA for it
            data = data[4:]
        self.responder.receive(data, Endpoint(addr[0], addr[1]), self)

    def send(self, datagram: bytes, remote: Endpoint) -> None:
        if self.nat_t:
            datagram = NON_ESP_MARKER + datagram
        self.transport.write(datagram, (remote.host, remote.port))

"""The kernel CHILD_SA installer: ESP SAs and IPsec policies through NETLINK_XFRM.

For each CHILD_SA (RFC 7296 §2.17) it installs two tunnel-mode ESP SAs (RFC 4303) — inbound
(peer to us) with the SPI we chose, outbound with the peer's — with their replay window,
soft and hard lifetimes and, behind a NAT, UDP encapsulation (RFC 3948). Then in, fwd and
out policies (RFC 4301 §4.4.1) for every pair of local and remote traffic selectors, whose
templates bind them to the SAs by reqid. Teardown removes them again.

Policies are written with UPDPOLICY and remembered per selector: when a rekeyed CHILD_SA
has the same selectors, its policies replace the old ones and removing the old CHILD_SA
leaves them alone (a rekey that keeps the reqid, as strongSwan does, keeps every packet of
the old SA acceptable during the overlap; with a new reqid the inbound template check
accepts only the new SA once its policies are in).

The responder of a rekey installs the new CHILD_SA in two steps (see
:mod:`vpnaaa.kernel.installer`): inbound SA and policies first, the outbound SA when the old
CHILD_SA goes. Meanwhile the out policy's template (by reqid) finds only the old outbound
SA; once both are in, the kernel's state lookup (xfrm_state_find) takes the valid SA that is
not soft-expired and was added last, and once the old one is deleted, bundles that still
point to it are stale and the next packet is sent on the new one.

Also here: the per-socket setup of the IKE sockets (a bypass policy each, ESP-in-UDP
decapsulation on port 4500), a probe for ESP in the kernel, and counters and expiry
events for the IKE layer.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from collections.abc import Callable, Container
from dataclasses import dataclass

from twisted.internet import defer
from twisted.internet.interfaces import IReactorFDSet
from twisted.python.failure import Failure

from vpnaaa import logs
from vpnaaa.kernel import xfrm
from vpnaaa.kernel.installer import ChildSaSpec, InstallError, Selector
from vpnaaa.kernel.netlink import NetlinkSocket
from vpnaaa.kernel.xfrm import NetlinkError, NetlinkMessage

log = logs.get("vpnaaa.kernel")

IP_XFRM_POLICY = 17  # linux/in.h
IPV6_XFRM_POLICY = 35  # linux/in6.h
UDP_ENCAP = 100  # linux/udp.h
PRIORITY_BASE = 10000  # lower is preferred; more specific selectors get lower numbers
MAX_POLICIES = 256  # per direction and CHILD_SA, after splitting port ranges
ICMP = (1, 58)


# --- building the SAs and policies of a CHILD_SA (pure) --------------------------------------


def _ip(text: str) -> xfrm.Address:
    return ipaddress.ip_address(text)


def child_sas(
    spec: ChildSaSpec, replay_window: int = 32, mark: xfrm.Mark | None = None, if_id: int = 0
) -> tuple[xfrm.Sa, xfrm.Sa]:
    """The inbound and outbound SA of ``spec``.

    Windows above 32 packets and ESN (RFC 4303 §2.2.1) need XFRMA_REPLAY_ESN_VAL, and an
    ESN SA needs it in both directions (the outbound one keeps the high sequence bits).
    Tunnel-mode SAs leave their selector to the policies (XFRM_STATE_AF_UNSPEC, as
    strongSwan does, so one SA may carry either inner family).
    """
    local, remote = _ip(spec.local_address), _ip(spec.remote_address)
    esn = spec.esn or replay_window > 32
    flags = xfrm.SaFlag.AF_UNSPEC | (xfrm.SaFlag.ESN if spec.esn else 0)
    lifetime = xfrm.Lifetime(
        soft_add_expires=spec.soft_lifetime, hard_add_expires=spec.hard_lifetime
    )

    def sa(
        src: xfrm.Address,
        dst: xfrm.Address,
        spi: int,
        encr_key: bytes,
        integ_key: bytes,
        ports: tuple[int, int] | None,
    ) -> xfrm.Sa:
        algorithms = xfrm.esp_algorithms(
            spec.encr_id, spec.encr_key_length, spec.integ_id, encr_key, integ_key
        )
        info = xfrm.SaInfo(
            dst,
            src,
            spi,
            reqid=spec.reqid,
            mode=xfrm.Mode.TUNNEL,
            replay_window=0 if esn else replay_window,
            flags=flags,
            lifetime=lifetime,
        )
        return xfrm.Sa(
            info,
            crypt=algorithms.crypt,
            auth=algorithms.auth,
            aead=algorithms.aead,
            encap=None if ports is None else xfrm.Encap(*ports),
            replay_esn=xfrm.ReplayEsn(replay_window) if esn else None,
            mark=mark,
            if_id=if_id,
        )

    nat = spec.encapsulation
    inbound = sa(
        remote,
        local,
        spec.inbound_spi,
        spec.inbound_encr_key,
        spec.inbound_integ_key,
        None if nat is None else (nat[1], nat[0]),
    )
    outbound = sa(
        local, remote, spec.outbound_spi, spec.outbound_encr_key, spec.outbound_integ_key, nat
    )
    return inbound, outbound


def port_masks(start: int, end: int) -> list[tuple[int, int]]:
    """A port range as the (port, mask) blocks an xfrm_selector can hold."""
    if start == 0 and end >= 0xFFFF:
        return [(0, 0)]
    blocks = []
    port = start
    while port <= end:
        size = port & -port if port else 0x10000
        while port + size - 1 > end:
            size //= 2
        blocks.append((port, 0xFFFF & ~(size - 1)))
        port += size
    return blocks


def _icmp(sel: Selector) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """ICMP type and code (the IKE "port" is type << 8 | code, RFC 4301 §4.4.1.1) go to the
    selector's sport and dport (the kernel's flowi). Only one type, or one type and code."""
    start, end = sel.start_port, sel.end_port
    if start == 0 and end >= 0xFFFF:
        return [(0, 0)], [(0, 0)]
    if start >> 8 == end >> 8 and (start & 0xFF, end & 0xFF) == (0, 0xFF):
        return [(start >> 8, 0xFFFF)], [(0, 0)]
    if start == end:
        return [(start >> 8, 0xFFFF)], [(start & 0xFF, 0xFFFF)]
    raise InstallError(f"ICMP selector {start}-{end} is not one type or one type and code")


def _selectors(src: Selector, dst: Selector) -> list[xfrm.Selector]:
    """The kernel selectors for traffic from ``src`` to ``dst`` (an empty list if the pair
    cannot match anything: different families or protocols)."""
    if src.network.version != dst.network.version:
        return []
    if src.protocol and dst.protocol and src.protocol != dst.protocol:
        return []
    proto = src.protocol or dst.protocol
    if not proto:
        sports = dports = [(0, 0)]
    elif proto in ICMP:
        sports, dports = _icmp(src if src.protocol else dst)
    else:
        sports = port_masks(src.start_port, src.end_port)
        dports = port_masks(dst.start_port, dst.end_port)
    return [
        xfrm.Selector.between(src.network, dst.network, proto, sport, dport)
        for sport in sports
        for dport in dports
    ]


def priority(sel: xfrm.Selector, base: int = PRIORITY_BASE) -> int:
    """Longer prefixes, then a protocol, then ports, come first (lower is preferred)."""
    prefixes = sel.saddr.prefixlen + sel.daddr.prefixlen
    return (
        base
        + (256 - prefixes) * 4
        + (0 if sel.proto else 2)
        + (0 if sel.sport_mask or sel.dport_mask else 1)
    )


PolicyKey = tuple[int, xfrm.Selector]


def child_policies(
    spec: ChildSaSpec,
    base: int = PRIORITY_BASE,
    mark: xfrm.Mark | None = None,
    if_id: int = 0,
) -> list[xfrm.Policy]:
    """The in, fwd and out policies of ``spec``: one of each per pair of local and remote
    selectors (and per port block), templates requiring ESP in tunnel mode with the
    spec's reqid between the IKE endpoints."""
    local, remote = _ip(spec.local_address), _ip(spec.remote_address)
    inward = xfrm.Template(local, remote, spec.reqid)
    outward = xfrm.Template(remote, local, spec.reqid)
    policies: list[xfrm.Policy] = []
    for ours in spec.local_selectors:
        for theirs in spec.remote_selectors:
            for sel in _selectors(theirs, ours):
                for dir in (xfrm.Dir.IN, xfrm.Dir.FWD):
                    info = xfrm.PolicyInfo(sel, dir, priority=priority(sel, base))
                    policies.append(xfrm.Policy(info, (inward,), mark, if_id))
            for sel in _selectors(ours, theirs):
                info = xfrm.PolicyInfo(sel, xfrm.Dir.OUT, priority=priority(sel, base))
                policies.append(xfrm.Policy(info, (outward,), mark, if_id))
    if not policies:
        raise InstallError("no traffic selector pair the kernel can hold")
    if len(policies) > 3 * MAX_POLICIES:
        raise InstallError(f"{len(policies)} policies for one CHILD_SA: selectors too fragmented")
    return policies


# --- IKE sockets ----------------------------------------------------------------------------


def bypass_ipsec(sock: socket.socket) -> None:
    """Per-socket ALLOW policies in both directions: IKE messages and NAT-T keepalives on
    ``sock`` stay in clear whatever the SPD says (as charon does for its sockets)."""
    if sock.family == socket.AF_INET6:
        level, option = socket.IPPROTO_IPV6, IPV6_XFRM_POLICY
    else:
        level, option = socket.IPPROTO_IP, IP_XFRM_POLICY
    for dir in (xfrm.Dir.IN, xfrm.Dir.OUT):
        sock.setsockopt(level, option, xfrm.socket_policy(dir, sock.family))


def espinudp(sock: socket.socket) -> None:
    """UDP_ENCAP_ESPINUDP on the port-4500 socket (RFC 3948 §2.2): the kernel takes
    datagrams that are not IKE (no four zero octets first) and not keepalives as ESP."""
    sock.setsockopt(socket.IPPROTO_UDP, UDP_ENCAP, xfrm.EncapType.ESPINUDP)


# --- the installer ------------------------------------------------------------------------


@dataclass(frozen=True)
class SaCounters:
    """struct xfrm_lifetime_cur and struct xfrm_stats of one SA."""

    bytes: int
    packets: int
    add_time: int  # seconds since the epoch
    use_time: int  # 0 if never used
    replay_window: int
    replay: int  # packets dropped as replays
    integrity_failed: int

    @classmethod
    def of(cls, sa: xfrm.Sa) -> SaCounters:
        cur, stats = sa.info.current, sa.info.stats
        return cls(
            cur.bytes,
            cur.packets,
            cur.add_time,
            cur.use_time,
            stats.replay_window,
            stats.replay,
            stats.integrity_failed,
        )


@dataclass(frozen=True)
class ChildSaCounters:
    inbound: SaCounters
    outbound: SaCounters


@dataclass(frozen=True)
class ExpireEvent:
    """An SA of ours reached its soft (rekey now) or hard limit. After a hard expiry the
    kernel has deleted that SA; the IKE layer deletes the CHILD_SA and calls remove()."""

    spec: ChildSaSpec
    inbound: bool
    hard: bool


@dataclass(frozen=True)
class EspSupport:
    """What :meth:`KernelInstaller.probe` found: ESP at all, and kernel algorithms absent."""

    esp: bool
    reason: str
    missing: tuple[str, ...] = ()


_PROBES = (
    xfrm.EspAlgorithms(
        crypt=xfrm.Algo("cbc(aes)", bytes(32)), auth=xfrm.AlgoAuth("hmac(sha256)", bytes(32), 128)
    ),
    xfrm.EspAlgorithms(aead=xfrm.AlgoAead("rfc4106(gcm(aes))", bytes(36), 128)),
    xfrm.EspAlgorithms(aead=xfrm.AlgoAead("rfc7539esp(chacha20,poly1305)", bytes(36), 128)),
)


def _explain(code: int) -> str:
    if code == errno.EPROTONOSUPPORT:
        return " (no ESP in this kernel: CONFIG_INET_ESP / module esp4)"
    if code == errno.ENOSYS:
        return " (algorithm missing from the kernel's crypto API)"
    return ""


def _not_found(failure: Failure) -> None:
    failure.trap(NetlinkError)
    if failure.value.errno not in (errno.ENOENT, errno.ESRCH):
        failure.raiseException()


class KernelInstaller:
    """:class:`~vpnaaa.kernel.installer.ChildSaInstaller` on Linux XFRM.

    ``mark`` and ``if_id`` go on every SA and policy (route-based setups with xfrm
    interfaces); ``expired`` receives the soft and hard expiry of our SAs. Two netlink
    sockets: one for requests, one joined to XFRMNLGRP_EXPIRE.
    """

    def __init__(
        self,
        reactor: IReactorFDSet | None = None,
        replay_window: int = 32,
        mark: xfrm.Mark | None = None,
        if_id: int = 0,
        priority_base: int = PRIORITY_BASE,
        expired: Callable[[ExpireEvent], None] | None = None,
    ) -> None:
        self.replay_window = replay_window
        self.mark = mark
        self.if_id = if_id
        self.priority_base = priority_base
        self.expired = expired
        self.netlink = NetlinkSocket(reactor)
        self.events = NetlinkSocket(reactor, [xfrm.Group.EXPIRE], self._event)
        self.installed: dict[int, ChildSaSpec] = {}  # by inbound SPI
        self._inbound_only: set[int] = set()  # inbound SPIs whose outbound SA is not in yet
        self._outbound_lock = defer.DeferredLock()  # one install_outbound() at a time
        self._owners: dict[PolicyKey, list[ChildSaSpec]] = {}  # latest owner last

    def close(self) -> None:
        self.netlink.close()
        self.events.close()

    # --- ChildSaInstaller ---------------------------------------------------------

    def install(self, spec: ChildSaSpec, outbound: bool = True) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._install(spec, outbound))

    def install_outbound(self, spec: ChildSaSpec) -> defer.Deferred[None]:
        def run() -> defer.Deferred[None]:
            return defer.Deferred.fromCoroutine(self._install_outbound(spec))

        return self._outbound_lock.run(run)

    def remove(self, spec: ChildSaSpec) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._remove(spec))

    async def _install(self, spec: ChildSaSpec, with_outbound: bool) -> None:
        try:  # everything that can be refused without asking the kernel
            inbound, outbound = child_sas(spec, self.replay_window, self.mark, self.if_id)
            child_policies(spec, self.priority_base, self.mark, self.if_id)
        except (xfrm.UnsupportedAlgorithm, InstallError) as e:
            raise InstallError(f"CHILD_SA reqid {spec.reqid}: {e}") from None
        await self._call(xfrm.new_sa(inbound), spec, f"inbound SA {spec.inbound_spi:08x}")
        if with_outbound:
            try:
                await self._call(xfrm.new_sa(outbound), spec, _outbound(spec))
            except InstallError:
                await self._delete_sas(spec, outbound=False)
                raise
        else:
            self._inbound_only.add(spec.inbound_spi)
        self.installed[spec.inbound_spi] = spec
        try:
            await self.add_policies(spec)
        except InstallError:
            await self._remove(spec)
            raise
        log.info(
            "CHILD_SA reqid {reqid} installed: SPIs {i:08x} in, {o:08x} out{later}",
            reqid=spec.reqid,
            i=spec.inbound_spi,
            o=spec.outbound_spi,
            later="" if with_outbound else " (outbound SA later)",
        )

    async def _install_outbound(self, spec: ChildSaSpec) -> None:
        installed = self.installed.get(spec.inbound_spi)
        if installed is None:
            raise InstallError.not_installed(spec)
        if spec.inbound_spi not in self._inbound_only:
            return
        _, outbound = child_sas(installed, self.replay_window, self.mark, self.if_id)
        await self._call(xfrm.new_sa(outbound), spec, _outbound(spec))
        if spec.inbound_spi not in self._inbound_only:  # remove() came meanwhile
            errors = await self._delete_sas(spec, inbound=False)
            what = f"CHILD_SA reqid {spec.reqid}: removed while its outbound SA was added"
            raise InstallError("; ".join([what, *errors]))
        self._inbound_only.discard(spec.inbound_spi)
        log.info(
            "CHILD_SA reqid {reqid}: outbound SA {o:08x} installed",
            reqid=spec.reqid,
            o=spec.outbound_spi,
        )

    async def _remove(self, spec: ChildSaSpec) -> None:
        errors: list[str] = []
        try:
            await self.remove_policies(spec)
        except InstallError as e:
            errors.append(str(e))
        self.installed.pop(spec.inbound_spi, None)
        outbound = spec.inbound_spi not in self._inbound_only
        self._inbound_only.discard(spec.inbound_spi)
        errors += await self._delete_sas(spec, outbound=outbound)
        if errors:
            raise InstallError("; ".join(errors))

    async def _delete_sas(
        self, spec: ChildSaSpec, inbound: bool = True, outbound: bool = True
    ) -> list[str]:
        local, remote = _ip(spec.local_address), _ip(spec.remote_address)
        targets = []
        if inbound:
            targets.append((xfrm.SaId(local, spec.inbound_spi), remote, "inbound"))
        if outbound:
            targets.append((xfrm.SaId(remote, spec.outbound_spi), local, "outbound"))
        errors = []
        for id, saddr, which in targets:
            try:
                await self.netlink.request(xfrm.del_sa(id, saddr, self.mark)).addErrback(_not_found)
            except NetlinkError as e:
                errors.append(f"CHILD_SA reqid {spec.reqid}: {which} SA {id.spi:08x}: {e}")
        return errors

    # --- policies -------------------------------------------------------------------

    async def add_policies(self, spec: ChildSaSpec) -> None:
        """Install (UPDPOLICY) the in, fwd and out policies of ``spec``; on failure put back
        what was there before."""
        done: list[xfrm.Policy] = []
        for policy in child_policies(spec, self.priority_base, self.mark, self.if_id):
            key = (policy.info.dir, policy.info.selector)
            try:
                await self._call(xfrm.new_policy(policy, update=True), spec, _describe(policy))
            except InstallError:
                for undo in reversed(done):
                    await self._release(spec, undo)
                raise
            self._owners.setdefault(key, []).append(spec)
            done.append(policy)

    async def remove_policies(self, spec: ChildSaSpec) -> None:
        """Remove the policies of ``spec``, unless another CHILD_SA with the same
        selectors still needs them (then they point to that one again)."""
        errors = []
        for policy in child_policies(spec, self.priority_base, self.mark, self.if_id):
            try:
                await self._release(spec, policy)
            except InstallError as e:
                errors.append(str(e))
        if errors:
            raise InstallError("; ".join(errors))

    async def _release(self, spec: ChildSaSpec, policy: xfrm.Policy) -> None:
        key = (policy.info.dir, policy.info.selector)
        owners = self._owners.get(key, [])
        if spec not in owners:
            return
        was_current = owners[-1] == spec
        owners.remove(spec)
        if owners and was_current:  # hand the policy back to the CHILD_SA before
            previous = next(
                p
                for p in child_policies(owners[-1], self.priority_base, self.mark, self.if_id)
                if (p.info.dir, p.info.selector) == key
            )
            await self._call(xfrm.new_policy(previous, update=True), spec, _describe(policy))
        elif not owners:
            del self._owners[key]
            request = xfrm.del_policy(
                xfrm.PolicyId(policy.info.selector, policy.info.dir), self.mark, self.if_id
            )
            try:
                await self.netlink.request(request).addErrback(_not_found)
            except NetlinkError as e:
                raise InstallError(f"{_describe(policy)}: {e}", e.errno) from None

    async def _call(self, request: xfrm.Request, spec: ChildSaSpec, what: str) -> None:
        try:
            await self.netlink.request(request)
        except NetlinkError as e:
            raise InstallError(
                f"CHILD_SA reqid {spec.reqid}: {what}: {e}{_explain(e.errno)}", e.errno
            ) from None

    # --- counters, flush, events ------------------------------------------------------

    def counters(self, spec: ChildSaSpec) -> defer.Deferred[ChildSaCounters]:
        """Bytes, packets, times and replay/integrity failures of both SAs (GETSA); all
        zero for an outbound SA not installed yet."""

        async def get() -> ChildSaCounters:
            local, remote = _ip(spec.local_address), _ip(spec.remote_address)
            sas = [(local, remote, spec.inbound_spi)]
            if spec.inbound_spi not in self._inbound_only:
                sas.append((remote, local, spec.outbound_spi))
            replies = []
            for daddr, saddr, spi in sas:
                answer = await self.netlink.request(
                    xfrm.get_sa(xfrm.SaId(daddr, spi), saddr, self.mark)
                )
                sa = xfrm.decode(answer[0])
                assert isinstance(sa, xfrm.Sa)
                replies.append(SaCounters.of(sa))
            if len(replies) == 1:
                replies.append(SaCounters(0, 0, 0, 0, 0, 0, 0))
            return ChildSaCounters(*replies)

        return defer.Deferred.fromCoroutine(get())

    def flush(
        self, reqid: int | Container[int] | None = None, mark: xfrm.Mark | None = None
    ) -> defer.Deferred[int]:
        """Delete every SA and policy with ``reqid`` (one or a container of them) and/or
        ``mark``: the kernel's FLUSHSA only knows protocols, so this dumps and deletes.
        Fires with the number deleted. Per-socket policies are never touched."""
        if reqid is None and mark is None:
            raise ValueError("flush needs a reqid or a mark; FLUSHSA would remove all")
        reqids: Container[int] | None = {reqid} if isinstance(reqid, int) else reqid

        def ours(r: int, m: xfrm.Mark | None) -> bool:
            return (reqids is None or r in reqids) and (mark is None or m == mark)

        async def run() -> int:
            count = 0
            for message in await self.netlink.request(xfrm.dump_sa()):
                sa = xfrm.decode(message)
                if isinstance(sa, xfrm.Sa) and ours(sa.info.reqid, sa.mark):
                    id = xfrm.SaId(sa.info.daddr, sa.info.spi, sa.info.proto)
                    d = self.netlink.request(xfrm.del_sa(id, sa.info.saddr, sa.mark))
                    await d.addErrback(_not_found)
                    count += 1
            for message in await self.netlink.request(xfrm.dump_policy()):
                policy = xfrm.decode(message)
                if not isinstance(policy, xfrm.Policy) or policy.info.dir > xfrm.Dir.FWD:
                    continue
                if any(ours(t.reqid, policy.mark) for t in policy.templates):
                    info = policy.info
                    pid = xfrm.PolicyId(info.selector, info.dir)
                    d = self.netlink.request(xfrm.del_policy(pid, policy.mark, policy.if_id))
                    await d.addErrback(_not_found)
                    count += 1
            self._owners = {
                k: [s for s in v if not ours(s.reqid, self.mark)] for k, v in self._owners.items()
            }
            self._owners = {k: v for k, v in self._owners.items() if v}
            return count

        return defer.Deferred.fromCoroutine(run())

    def _event(self, message: NetlinkMessage) -> None:
        event = xfrm.decode(message)
        if not isinstance(event, xfrm.Expire) or event.sa.info.proto != xfrm.Proto.ESP:
            return
        info = event.sa.info
        spec = self.installed.get(info.spi)
        inbound = spec is not None and _ip(spec.local_address) == info.daddr
        if not inbound:
            spec = next(
                (
                    s
                    for s in self.installed.values()
                    if s.outbound_spi == info.spi
                    and _ip(s.remote_address) == info.daddr
                    and s.inbound_spi not in self._inbound_only
                ),
                None,
            )
        if spec is None:
            return
        log.info(
            "CHILD_SA reqid {reqid}: {which} SA {spi:08x} {kind} expired",
            reqid=spec.reqid,
            which="inbound" if inbound else "outbound",
            spi=info.spi,
            kind="hard" if event.hard else "soft",
        )
        if event.hard:
            self.installed.pop(spec.inbound_spi, None)
            self._inbound_only.discard(spec.inbound_spi)
        if self.expired is not None:
            self.expired(ExpireEvent(spec, inbound, event.hard))

    # --- probe ------------------------------------------------------------------------

    @classmethod
    def probe(
        cls, reactor: IReactorFDSet | None = None, netlink: NetlinkSocket | None = None
    ) -> defer.Deferred[EspSupport]:
        """Whether this kernel (in this network namespace) can do ESP: add throwaway SAs
        between two TEST-NET-1 addresses (RFC 5737), no policy pointing at them, and delete
        them. EPROTONOSUPPORT means no ESP; ENOSYS an algorithm the kernel lacks. On
        ``netlink`` when given (an installer's socket, opened while privileged), else on a
        socket of its own."""

        async def run(netlink: NetlinkSocket) -> EspSupport:
            esp, reason, missing = True, "ESP available", []
            src, dst = ipaddress.IPv4Address("192.0.2.1"), ipaddress.IPv4Address("192.0.2.2")
            for algorithms in _PROBES:
                spi = int.from_bytes(os.urandom(4), "big") | 0x80000000
                info = xfrm.SaInfo(dst, src, spi, reqid=0, mode=xfrm.Mode.TUNNEL)
                sa = xfrm.Sa(info, algorithms.crypt, algorithms.auth, algorithms.aead)
                cipher = algorithms.aead or algorithms.crypt
                name = cipher.name if cipher is not None else "?"
                try:
                    await netlink.request(xfrm.new_sa(sa))
                except NetlinkError as e:
                    if e.errno == errno.EPROTONOSUPPORT:
                        esp, reason = False, f"no ESP in this kernel: {e}"
                    elif e.errno == errno.ENOSYS:
                        missing.append(name)
                    else:
                        esp, reason = False, f"cannot add an ESP SA: {e}"
                    continue
                await netlink.request(xfrm.del_sa(xfrm.SaId(dst, spi), src)).addErrback(_not_found)
            return EspSupport(esp, reason, tuple(missing))

        if netlink is not None:
            return defer.Deferred.fromCoroutine(run(netlink))
        own = NetlinkSocket(reactor)
        d = defer.Deferred.fromCoroutine(run(own))

        def close(result: object) -> object:
            own.close()
            return result

        return d.addBoth(close)


def _outbound(spec: ChildSaSpec) -> str:
    return f"outbound SA {spec.outbound_spi:08x}"


def _describe(policy: xfrm.Policy) -> str:
    sel = policy.info.selector
    dir = xfrm.Dir(policy.info.dir).name.lower()
    return f"{dir} policy {sel.saddr} -> {sel.daddr}" + (f" proto {sel.proto}" if sel.proto else "")

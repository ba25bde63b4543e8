"""IKE_AUTH with EAP, responder side (RFC 7296 §1.2, §2.15, §2.16, §3.15; RFC 7427);
with a client certificate instead: :mod:`vpnaaa.ike.tasks.certificate`.

    IDi, [IDr], [N(INITIAL_CONTACT)], CP(request), SAi2, TSi, TSr
                        -> IDr, CERT, AUTH(our signature), EAP(Request)
    EAP(Response)       -> EAP(Request | Success | Failure)     (the profile's backend)
    AUTH(from the MSK)  -> AUTH(from the MSK), CP(reply), SAr2, TSi, TSr

:class:`IkeAuth` holds this exchange's state; the functions are the core's responders for
IKE_AUTH in each state, and :func:`eap_result` takes the backend's answer; :func:`our_auth`,
:func:`admitted` and :func:`establish` serve both ways of authenticating.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from vpnaaa import logs
from vpnaaa.eap import packet
from vpnaaa.eap.authenticator import Challenge, Result, Success
from vpnaaa.eap.authenticator import Failure as EapFailure
from vpnaaa.ike import keys, signatures
from vpnaaa.ike.common import EndCause, Ending, Event, Profile, log, notify, user_key
from vpnaaa.ike.const import (
    AuthMethod,
    CertEncoding,
    CfgAttribute,
    CfgType,
    IdType,
    NotifyType,
    PayloadType,
)
from vpnaaa.ike.effects import Effects, Established, RunEap
from vpnaaa.ike.message import (
    Authentication,
    Certificate,
    Configuration,
    Eap,
    Entry,
    Header,
    Identification,
    Message,
)
from vpnaaa.ike.tasks import child
from vpnaaa.pki import ServerIdentity
from vpnaaa.pool import AddressPool, PoolExhausted

if TYPE_CHECKING:
    from vpnaaa.certs import VerifiedCertificate
    from vpnaaa.ike.sa import IkeSa
    from vpnaaa.ike.tasks.ike_init import InitExchange

MIN_MSK = 32  # octets; RFC 3748 §7.10 asks 64, the MS-MPPE keys of a RADIUS Accept carry 32


@dataclass
class IkeAuth:
    """What IKE_AUTH keeps between its messages: the IKE_SA_INIT it signs, the client's
    first request (IDi, CP, SAi2, TSs), our IDr, the EAP conversation and its MSK."""

    exchange: InitExchange | None = None
    request: Message | None = None  # the first IKE_AUTH request's inner payloads
    idr: Identification | None = None
    conversation: bytes | None = None  # the EAP backend's id
    msk: bytes = field(default=b"", repr=False)
    rounds: int = 0  # EAP Responses the client sent
    method: int | None = None  # how we signed our AUTH
    pending: Header | None = None  # the request an EAP step or the revocation check answers
    verified: VerifiedCertificate | None = None  # the client's, while revocation is checked
    scheme: str = ""  # the signature scheme of the client's AUTH, with a certificate


def first(sa: IkeSa, header: Header, inner: Message) -> Effects:
    """IKE_AUTH #1 without the client's AUTH: choose the profile, begin EAP, sign
    (§2.15, §2.16)."""
    idi = inner.get(PayloadType.IDi)
    if not isinstance(idi, Identification):
        return fail(sa, header, "IKE_AUTH without IDi")
    requested = inner.get(PayloadType.IDr)
    requested = requested if isinstance(requested, Identification) else None
    profile = sa.context.profile_for(requested, sa.local.host)
    if profile is None:
        return fail(sa, header, "the client asks for EAP; no profile has auth = eap")
    sa.profile = profile
    backend = sa.profile.eap
    if backend is None:
        return fail(sa, header, "no EAP backend configured")
    auth = sa.auth
    auth.request = inner
    sa.initial_contact = inner.notify(NotifyType.INITIAL_CONTACT) is not None
    log.info(
        "{sa}: IKE_AUTH from IDi {id}, profile {profile}",
        sa=sa.name,
        id=describe_id(idi),
        profile=sa.profile.name,
    )
    auth.conversation, started = backend.begin(sa.remote.host)
    if isinstance(started, EapFailure):  # refused before we spend a signature on it
        return fail(sa, header, f"EAP refused: {started.reason}")
    entries = our_auth(sa, requested)
    sa.transition(Event.EAP_BEGUN)
    entries.append((PayloadType.EAP, Eap(started.eap)))
    return sa.respond(header, entries)


def our_auth(sa: IkeSa, requested: Identification | None) -> list[Entry]:
    """IDr, our certificate and its intermediates, and our AUTH signature (§2.15, §3.6)."""
    auth = sa.auth
    assert sa.crypto is not None and auth.exchange is not None
    identity = sa.context.identity
    idr = auth.idr = our_identification(identity, requested)
    octets = keys.signed_octets(
        sa.crypto.prf, auth.exchange.response, auth.exchange.ni, sa.crypto.keys.sk_pr, idr.encode()
    )
    auth.method, signature = signatures.sign(identity, auth.exchange.signature_hashes, octets)
    entries: list[Entry] = [
        (PayloadType.IDr, idr),
        (PayloadType.CERT, Certificate(CertEncoding.X509_SIGNATURE, _der(identity.cert))),
    ]
    for extra in identity.chain:
        if extra.issuer != extra.subject:  # intermediates only; clients hold the root
            entries.append(
                (PayloadType.CERT, Certificate(CertEncoding.X509_SIGNATURE, _der(extra)))
            )
    entries.append((PayloadType.AUTH, Authentication(auth.method, signature)))
    return entries


def eap(sa: IkeSa, header: Header, inner: Message) -> Effects:
    """IKE_AUTH #n: the client's EAP Response goes to the backend (§2.16)."""
    payload = inner.get(PayloadType.EAP)
    if not isinstance(payload, Eap):
        return fail(sa, header, "IKE_AUTH without EAP payload during EAP")
    auth = sa.auth
    assert auth.conversation is not None
    sa.working, auth.pending = header.message_id, header
    auth.rounds += 1
    return (RunEap(auth.conversation, payload.data),)


def eap_result(sa: IkeSa, result: Result) -> Effects:
    """The backend's answer to the pending EAP Response."""
    auth = sa.auth
    header = auth.pending
    assert header is not None and sa.working == header.message_id
    sa.working = auth.pending = None
    entries: list[Entry] = [(PayloadType.EAP, Eap(result.eap))]
    if isinstance(result, Challenge):
        return sa.respond(header, entries)
    if isinstance(result, Success):
        refusal = _refusal(sa, result)
        if refusal is None:
            sa.transition(Event.EAP_SUCCEEDED)
            sa.identity, auth.msk = result.identity, result.msk
            sa.identity_verified = result.verified
            sa.authorization = result.authorization
            sa.certificate = result.certificate  # EAP-TLS: deny and CRL reloads end it
            cert = result.certificate
            log.info(
                "{sa}: EAP-{method} succeeded for {user}{certificate}",
                sa=sa.name,
                method=result.method,
                user=logs.quoted(result.identity),
                certificate=(
                    f" (certificate {logs.quoted(cert.subject)} serial {cert.serial})"
                    if cert
                    else ""
                ),
            )
            return sa.respond(header, entries)
        failure = packet.failure(result.eap[1]).encode()
        result = EapFailure(failure, result.identity, refusal)
        entries = [(PayloadType.EAP, Eap(failure))]
    log.info(
        "{sa}: EAP failed for {user}: {reason}; AUTHENTICATION_FAILED",
        sa=sa.name,
        user=logs.quoted(result.identity),
        reason=result.reason,
    )
    entries.append(notify(NotifyType.AUTHENTICATION_FAILED))
    refused = Ending(EndCause.REFUSED, f"EAP failed: {result.reason}")
    return sa.end(sa.respond(header, entries), refused)


def _refusal(sa: IkeSa, success: Success) -> str | None:
    """Why an EAP Success may still not authenticate this SA, or None."""
    if len(success.msk) < MIN_MSK:
        # §2.16 would fall back to SK_p, but every method offered here derives an MSK:
        # a Success without one is a broken backend, not a reason to skip the binding.
        return f"EAP-{success.method} succeeded without a usable MSK ({len(success.msk)} octets)"
    if sa.profile.users and not success.verified:
        return (
            f"profile {sa.profile.name} has a users list and the RADIUS server did not name "
            "the user it authenticated (no User-Name in its Access-Accept)"
        )
    if not sa.profile.admits(success.identity):
        return f"not in the users list of profile {sa.profile.name}"
    return None


def last(sa: IkeSa, header: Header, inner: Message) -> Effects:
    """The last IKE_AUTH: the client's AUTH from the MSK, ours, the address, the first
    CHILD_SA (§2.16, §3.15)."""
    auth = sa.auth
    payload = inner.get(PayloadType.AUTH)
    assert sa.crypto is not None and auth.request is not None and auth.exchange is not None
    prf, exchange = sa.crypto.prf, auth.exchange
    if not isinstance(payload, Authentication) or payload.method != AuthMethod.SHARED_KEY:
        return fail(sa, header, "final IKE_AUTH without a shared-key AUTH payload")
    sk_pi, sk_pr = sa.crypto.keys.sk_pi, sa.crypto.keys.sk_pr
    idi = auth.request.get(PayloadType.IDi)
    assert isinstance(idi, Identification)
    theirs = keys.signed_octets(prf, exchange.request, exchange.nr, sk_pi, idi.encode())
    if not hmac.compare_digest(keys.eap_auth(prf, auth.msk, sk_pi, theirs), payload.data):
        return fail(sa, header, "the client's AUTH does not match the EAP MSK")
    refusal = admitted(sa)
    if refusal is not None:
        return fail(sa, header, refusal)
    assert auth.idr is not None
    ours = keys.signed_octets(prf, exchange.response, exchange.ni, sk_pr, auth.idr.encode())
    entries: list[Entry] = [
        (
            PayloadType.AUTH,
            Authentication(AuthMethod.SHARED_KEY, keys.eap_auth(prf, auth.msk, sk_pr, ours)),
        )
    ]
    return establish(sa, header, Event.AUTHENTICATED, entries)


def admitted(sa: IkeSa) -> str | None:
    """Why the authenticated client may not have one more session, or None: the
    profile's ``max_sessions_per_user`` with ``session_limit = "refuse"`` (INITIAL_CONTACT
    does not bypass it)."""
    profile = sa.profile
    limit = profile.max_sessions_per_user
    if limit and profile.session_limit == "refuse" and sa.identity_verified:
        held = sa.context.sessions_of(user_key(sa.identity), profile)
        if held >= limit:
            return f"{held} sessions already (max_sessions_per_user = {limit})"
    return None


def establish(sa: IkeSa, header: Header, event: Event, entries: list[Entry]) -> Effects:
    """The client is authenticated (``event``): the session begins, named; the answer is
    ``entries`` (our AUTH), the address (CP, §3.15) and the first CHILD_SA (§1.2)."""
    auth = sa.auth
    assert auth.request is not None and auth.exchange is not None
    sa.transition(event)
    sa.session_id = sa.context.random_bytes(8).hex().upper()
    log.info(
        "{sa}: ESTABLISHED for {user} with {suite}{nat}",
        sa=sa.name,
        user=logs.quoted(sa.identity),
        suite=sa.suite,
        nat=", NAT detected" if sa.nat_detected else "",
    )
    sa.context.supersede(sa)
    request = auth.request
    cp = request.get(PayloadType.CP)
    if isinstance(cp, Configuration) and cp.cfg_type == CfgType.REQUEST:
        try:
            entries.append((PayloadType.CP, _configuration(sa, cp)))
        except PoolExhausted as e:
            log.error("{sa}: no virtual IP: {error}", sa=sa.name, error=str(e))
            entries.append(notify(NotifyType.INTERNAL_ADDRESS_FAILURE))
            return (Established(), *sa.respond(header, entries))
    exchange = auth.exchange
    return (Established(), *child.negotiate(sa, header, request, entries, exchange.ni, exchange.nr))


def _configuration(sa: IkeSa, request: Configuration) -> Configuration:
    """CFG_REPLY (§3.15): the leased address (the user's last one when it is free), DNS,
    NBNS; what we do not serve (IPv6, vendor attributes like Microsoft's 23456) is left
    out, never refused."""
    wanted = {kind for kind, _ in request.attributes}
    profile = sa.profile
    attributes: list[tuple[int, bytes]] = []
    if CfgAttribute.INTERNAL_IP4_ADDRESS in wanted:
        sa.pool = _pool(sa)
        framed = sa.authorization.framed_ip
        other = _other_pool(sa, framed) if framed is not None else None
        if other is not None:  # that pool leases it to its own sessions
            raise PoolExhausted(
                f"Framed-IP-Address {framed} is in pool {other.pool.network} of profile "
                f"{other.name}, not in {sa.pool.network}"
            )
        sa.virtual_ip = sa.pool.lease(user_key(sa.identity), sa.session_id, framed)
        attributes.append((CfgAttribute.INTERNAL_IP4_ADDRESS, sa.virtual_ip.packed))
        if CfgAttribute.INTERNAL_IP4_NETMASK in wanted:
            netmask = sa.pool.netmask(sa.virtual_ip)
            attributes.append((CfgAttribute.INTERNAL_IP4_NETMASK, netmask.packed))
    if CfgAttribute.INTERNAL_IP4_DNS in wanted:
        attributes += [(CfgAttribute.INTERNAL_IP4_DNS, a.packed) for a in profile.dns]
    if CfgAttribute.INTERNAL_IP4_NBNS in wanted:
        attributes += [(CfgAttribute.INTERNAL_IP4_NBNS, a.packed) for a in profile.nbns]
    return Configuration(CfgType.REPLY, tuple(attributes))


def _other_pool(sa: IkeSa, address: ipaddress.IPv4Address) -> Profile | None:
    """The profile whose pool holds ``address``, if not the session's."""
    profiles = sa.context.profiles
    return next((p for p in profiles if p.pool is not sa.pool and address in p.pool.network), None)


def _pool(sa: IkeSa) -> AddressPool:
    """The pool a session's address comes from: its profile's, or the one of the profile
    a Framed-Pool (RFC 2869 §5.18) names (an ASA's address-pool by name)."""
    name = sa.authorization.framed_pool
    if name is None:
        return sa.profile.pool
    named = next((p.pool for p in sa.context.profiles if p.name == name), None)
    if named is None:
        raise PoolExhausted(f"Framed-Pool {name!r} names no profile's pool")
    return named


def fail(sa: IkeSa, header: Header, reason: str) -> Effects:
    """AUTHENTICATION_FAILED in the response, and the SA ends (§2.21.2)."""
    log.info("{sa}: AUTHENTICATION_FAILED: {reason}", sa=sa.name, reason=reason)
    effects = sa.respond(header, [notify(NotifyType.AUTHENTICATION_FAILED)])
    return sa.end(effects, Ending(EndCause.REFUSED, f"authentication failed: {reason}"))


def our_identification(
    identity: ServerIdentity, requested: Identification | None
) -> Identification:
    """IDr: the identity the initiator asked for when our certificate carries it (an
    iPAddress or dNSName SAN, or the subject), else the subject DN (RFC 7296 §3.5); with
    RESERVED zero, whatever the initiator's held."""
    cert = identity.cert
    if requested is not None and _certificate_names(cert, requested):
        return Identification(requested.id_type, requested.data)
    return Identification(IdType.DER_ASN1_DN, cert.subject.public_bytes())


def _certificate_names(cert: x509.Certificate, wanted: Identification) -> bool:
    """Whether ``cert`` carries the identity ``wanted`` (SAN iPAddress/dNSName or subject)."""
    if wanted.id_type == IdType.DER_ASN1_DN:
        return wanted.data == cert.subject.public_bytes()
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    if wanted.id_type in (IdType.IPV4_ADDR, IdType.IPV6_ADDR):
        try:
            return ipaddress.ip_address(wanted.data) in san.get_values_for_type(x509.IPAddress)
        except ValueError:
            return False
    if wanted.id_type == IdType.FQDN:
        return wanted.data.decode("ascii", "replace") in san.get_values_for_type(x509.DNSName)
    return False


def _der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(Encoding.DER)


def describe_id(identification: Identification) -> str:
    """An IDi or IDr for a log line (§3.5)."""
    if identification.id_type in (IdType.IPV4_ADDR, IdType.IPV6_ADDR):
        return str(ipaddress.ip_address(identification.data))
    if identification.id_type in (IdType.FQDN, IdType.RFC822_ADDR):
        return logs.quoted(identification.data.decode("utf-8", "replace"))
    return f"type {identification.id_type} {identification.data.hex()}"

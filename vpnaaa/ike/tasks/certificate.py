"""IKE_AUTH with the client's certificate, responder side: no EAP (RFC 7296 §1.2, §2.15,
§3.6-3.8; RFC 7427; RFC 4945 §3, §5), what the Windows "Always On VPN" device tunnel does.

    IDi, CERT+, [CERTREQ], [IDr], AUTH, [N(INITIAL_CONTACT)], CP(request), SAi2, TSi, TSr
        (the chain, IDi and AUTH checked here; revocation by the edge, asynchronously)
                        -> IDr, CERT+, AUTH(our signature), CP(reply), SAr2, TSi, TSr

The checks run cheapest and most telling first: the CERT payloads' count, size and
encoding; the chain (:class:`vpnaaa.certs.ClientVerifier`: anchors of the profile, validity
at the edge's clock, EKU/KU rules); that the certificate names IDi
(:func:`vpnaaa.certs.matches_id`); the AUTH signature over the initiator's signed octets
(§2.15); then revocation (:class:`~vpnaaa.ike.effects.CheckRevocation`, which the edge runs
and answers through :meth:`IkeSa.revocation_checked`). Only then do we sign. Any refusal
is AUTHENTICATION_FAILED in the response (§2.21.2) with one log line naming the
certificate's subject and serial and the reason.
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING

from cryptography import x509

from vpnaaa import logs
from vpnaaa.certs import (
    MAX_CERTIFICATE_SIZE,
    MAX_CERTIFICATES,
    CertificateRejected,
    VerifiedCertificate,
    matches_id,
    serial_hex,
)
from vpnaaa.certs.identity import Identity, same_dns, same_email
from vpnaaa.ike import keys, signatures
from vpnaaa.ike.common import Event, log
from vpnaaa.ike.const import CertEncoding, IdType, NotifyType, PayloadType
from vpnaaa.ike.effects import CheckRevocation, Effects
from vpnaaa.ike.message import Authentication, Certificate, Header, Identification, Message
from vpnaaa.ike.tasks import ike_auth
from vpnaaa.ike.tasks.ike_auth import describe_id

if TYPE_CHECKING:
    from vpnaaa.certs import RevocationResult
    from vpnaaa.ike.sa import IkeSa


class Refusal(Exception):
    """Why a client's certificate authentication is refused, for its one log line."""


def first(sa: IkeSa, header: Header, inner: Message) -> Effects:
    """IKE_AUTH with the client's AUTH: choose a certificate profile, check everything
    but revocation, then ask the edge for that (§2.15)."""
    idi = inner.get(PayloadType.IDi)
    if not isinstance(idi, Identification):
        return ike_auth.fail(sa, header, "IKE_AUTH without IDi")
    requested = inner.get(PayloadType.IDr)
    requested = requested if isinstance(requested, Identification) else None
    profile = sa.context.profile_for(requested, sa.local.host, "certificate")
    if profile is None or profile.certificates is None:
        return ike_auth.fail(
            sa, header, "the client authenticates with AUTH; no profile has auth = certificate"
        )
    sa.profile = profile
    auth = sa.auth
    auth.request = inner
    sa.initial_contact = inner.notify(NotifyType.INITIAL_CONTACT) is not None
    try:
        verified = _check(sa, inner, idi)
    except Refusal as e:  # the certificate named as far as it parses
        return ike_auth.fail(sa, header, f"certificate {_leaf(inner)}: {e}")
    auth.verified = verified
    sa.working, auth.pending = header.message_id, header
    return (CheckRevocation(verified),)


def revocation_checked(sa: IkeSa, result: RevocationResult) -> Effects:
    """The edge's revocation verdict on the pending IKE_AUTH: refuse, or sign and
    establish the session with the certificate's identity that IDi named."""
    auth = sa.auth
    header, verified = auth.pending, auth.verified
    assert header is not None and verified is not None and sa.working == header.message_id
    sa.working = auth.pending = None
    described = f"{logs.quoted(verified.subject)} serial {verified.serial}"
    if not result.accepted:
        return ike_auth.fail(sa, header, f"certificate {described}: {result.reason}")
    assert auth.request is not None
    idi = auth.request.get(PayloadType.IDi)
    assert isinstance(idi, Identification)
    sa.identity = named_identity(verified, idi).value
    sa.identity_verified = True
    if not sa.profile.admits(sa.identity):
        reason = f"not in the users list of profile {sa.profile.name}"
        return ike_auth.fail(sa, header, f"certificate {described}: {reason}")
    refusal = ike_auth.admitted(sa)
    if refusal is not None:
        return ike_auth.fail(sa, header, f"certificate {described}: {refusal}")
    sa.certificate = verified
    log.info(
        "{sa}: certificate {subject} serial {serial} ({key}, AUTH {scheme}) accepted for "
        "{user}: {said}",
        sa=sa.name,
        subject=verified.subject,
        serial=verified.serial,
        key=verified.key_type,
        scheme=auth.scheme,
        user=logs.quoted(sa.identity),
        said=result.reason,
    )
    requested = auth.request.get(PayloadType.IDr)
    entries = ike_auth.our_auth(sa, requested if isinstance(requested, Identification) else None)
    return ike_auth.establish(sa, header, Event.CERTIFICATE_ACCEPTED, entries)


def _check(sa: IkeSa, inner: Message, idi: Identification) -> VerifiedCertificate:
    """The chain, IDi and AUTH of the client (module docstring); raises :class:`Refusal`."""
    certificates = sa.profile.certificates
    assert certificates is not None and sa.crypto is not None and sa.auth.exchange is not None
    payloads = inner.all(PayloadType.CERT)
    if not payloads:
        raise Refusal("no CERT payload (we keep no client certificates to look up)")
    if len(payloads) > MAX_CERTIFICATES:
        raise Refusal(f"{len(payloads)} CERT payloads, more than {MAX_CERTIFICATES}")
    for payload in payloads:
        if payload.encoding != CertEncoding.X509_SIGNATURE:
            raise Refusal(f"CERT encoding {payload.encoding}; we take X.509 signature (4)")
        if len(payload.data) > MAX_CERTIFICATE_SIZE:
            raise Refusal(f"a {len(payload.data)}-octet certificate")
    now = datetime.datetime.fromtimestamp(sa.context.clock(), datetime.UTC)
    try:
        verified = certificates.verifier.verify(
            payloads[0].data, [p.data for p in payloads[1:]], now
        )
    except CertificateRejected as e:
        raise Refusal(e.reason) from None
    if not matches_id(verified.certificate, idi.id_type, idi.data):
        raise Refusal(f"it does not name IDi {describe_id(idi)}")
    auth = inner.get(PayloadType.AUTH)
    assert isinstance(auth, Authentication)
    exchange, crypto = sa.auth.exchange, sa.crypto
    octets = keys.signed_octets(
        crypto.prf, exchange.request, exchange.nr, crypto.keys.sk_pi, idi.encode()
    )
    try:
        scheme = signatures.verify(
            verified.certificate.public_key(),
            auth.method,
            auth.data,
            octets,
            sha1=certificates.sha1_signatures,
        )
    except signatures.SignatureRejected as e:
        raise Refusal(str(e)) from None
    sa.auth.scheme = scheme
    return verified


def _leaf(inner: Message) -> str:
    """The first CERT's subject and serial, for the log line, as far as it parses."""
    payload = inner.get(PayloadType.CERT)
    if not isinstance(payload, Certificate) or payload.encoding != CertEncoding.X509_SIGNATURE:
        return "(none)"
    try:
        cert = x509.load_der_x509_certificate(payload.data)
        return (
            f"{logs.quoted(cert.subject.rfc4514_string())} serial {serial_hex(cert.serial_number)}"
        )
    except ValueError:
        return "(not DER X.509)"


def named_identity(verified: VerifiedCertificate, idi: Identification) -> Identity:
    """The certificate's identity that IDi named (:func:`matches_id` said one does): the
    session's name. An ID_DER_ASN1_DN names the subject DN."""
    text = idi.data.decode("utf-8", "replace")
    for found in verified.identities:
        if idi.id_type == IdType.FQDN and found.kind in ("dns", "cn-fqdn"):
            named = same_dns(text, found.value)
        elif idi.id_type == IdType.RFC822_ADDR and found.kind in ("email", "upn"):
            named = same_email(text, found.value)
        elif idi.id_type in (IdType.IPV4_ADDR, IdType.IPV6_ADDR) and found.kind == "ip":
            named = describe_id(idi) == found.value
        else:
            named = False
        if named:
            return found
    return next(i for i in verified.identities if i.kind == "dn")

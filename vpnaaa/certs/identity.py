"""Who a client certificate names, and whether it names an IKEv2 IDi.

:func:`identities` lists the certificate's names, best first: the Microsoft UPN otherName
(1.3.6.1.4.1.311.20.2.3, a UTF8String; what Windows user certificates carry and what
Active Directory knows the user by), rfc822Name, dNSName, iPAddress from the
subjectAltName, then the subject CN when it is an FQDN and the certificate has no dNSName
(a device certificate), and last the subject DN, always.

:func:`matches_id` decides whether a certificate names the IDi a peer sent (RFC 7296 §3.5,
RFC 4945 §3.1): ID_FQDN against dNSName, ID_RFC822_ADDR against rfc822Name (and the UPN,
which strongSwan treats as an RFC 822 address too, x509_cert.c parse_otherName),
ID_IPV4_ADDR/ID_IPV6_ADDR against iPAddress, ID_DER_ASN1_DN against the subject.

Device certificates: the Always On VPN device tunnel authenticates the machine with its
computer certificate, no EAP (Microsoft Learn, "Configure VPN device tunnels in Windows",
learn.microsoft.com/windows-server/remote/remote-access/vpn/vpn-device-tunnel-config:
"machine certificate authentication", domain-joined devices only). Computer certificates
from AD CS templates whose subject is built from Active Directory carry
CN=<the computer's DNS name>, and those made without an alternate name ticked in the
template's Subject Name tab have no subjectAltName (Microsoft documents the device
certificate only as a machine certificate with Client Authentication; the "subject is the
device FQDN" rule is deployment guidance, not a Microsoft page we could cite). RFC 4945
§3.1.2 binds ID_FQDN to dNSName, and strongSwan matches ID_FQDN against the SAN only; we
also accept the subject's (last) CN, but only when it looks like an FQDN and the
certificate has no dNSName at all (as RFC 6125 §6.4.4 allows a CN only when no DNS-ID is
present), so a certificate whose SAN names other hosts cannot claim one through its CN.

Comparisons: DNS names case-insensitively, without a trailing dot (RFC 4343); e-mail
addresses with the local part exact and the domain case-insensitive (RFC 5280 §7.5); DNs
(RFC 5280 §7.1) RDN by RDN in order, attribute values of string types compared after
Unicode NFKC normalisation, case folding and whitespace compression (RFC 4518 §2, the
parts that matter for certificate names), values of other types byte for byte.
"""

from __future__ import annotations

import ipaddress
import unicodedata
from dataclasses import dataclass
from typing import Literal

from cryptography import x509
from cryptography.x509.oid import NameOID

from vpnaaa.ike.const import IdType

UPN = x509.ObjectIdentifier("1.3.6.1.4.1.311.20.2.3")

Kind = Literal["upn", "email", "dns", "ip", "cn-fqdn", "dn"]


@dataclass(frozen=True)
class Identity:
    """One name a certificate carries: ``kind`` says where it came from."""

    kind: Kind
    value: str


def identities(cert: x509.Certificate) -> tuple[Identity, ...]:
    """The certificate's names, best first (module docstring); never empty (the DN)."""
    san = _san(cert)
    found: list[Identity] = []
    if san is not None:
        found += [Identity("upn", v) for v in _upns(san)]
        found += [Identity("email", v) for v in _emails(san)]
        found += [Identity("dns", v) for v in _dns_names(san)]
        found += [Identity("ip", str(v)) for v in san.get_values_for_type(x509.IPAddress)]
    fqdn = _cn_fqdn(cert, san)
    if fqdn is not None:
        found.append(Identity("cn-fqdn", fqdn))
    found.append(Identity("dn", cert.subject.rfc4514_string()))
    return tuple(found)


def _upns(san: x509.SubjectAlternativeName) -> list[str]:
    upns = (_upn(other) for other in san.get_values_for_type(x509.OtherName))
    return [v for v in upns if v is not None and _plain(v, "\\")]


def _emails(san: x509.SubjectAlternativeName) -> list[str]:
    return [v for v in san.get_values_for_type(x509.RFC822Name) if _plain(v, "\\")]


def _dns_names(san: x509.SubjectAlternativeName | None) -> list[str]:
    names = san.get_values_for_type(x509.DNSName) if san is not None else []
    return [v for v in names if _plain(v, "@\\")]


def _plain(name: str, refused: str) -> bool:
    """Whether a name is one to authenticate as: no whitespace, nothing unprintable and
    none of ``refused`` — a backslash would read as a DOMAIN\\ prefix in the session's
    user (``CORP\\alice`` is alice), an "@" in a dNSName as an e-mail address: a CA
    that builds names from what devices report must not make one user out of another."""
    return not any(c in refused or c.isspace() or not c.isprintable() for c in name)


def matches_id(cert: x509.Certificate, id_type: int, data: bytes) -> bool:
    """Whether ``cert`` names the IKEv2 identification ``id_type``/``data`` (the IDi
    payload's ID Type and Identification Data, RFC 7296 §3.5). Unknown types: no."""
    san = _san(cert)
    if id_type == IdType.DER_ASN1_DN:
        return same_dn(data, cert.subject.public_bytes())
    if id_type == IdType.FQDN:
        wanted = _text(data)
        if wanted is None:
            return False
        names = _dns_names(san)
        fqdn = _cn_fqdn(cert, san)
        if fqdn is not None:
            names.append(fqdn)
        return any(same_dns(wanted, name) for name in names)
    if id_type == IdType.RFC822_ADDR:
        wanted = _text(data)
        if wanted is None or san is None:
            return False
        return any(same_email(wanted, name) for name in _emails(san) + _upns(san))
    if id_type in (IdType.IPV4_ADDR, IdType.IPV6_ADDR):
        if san is None or len(data) != (4 if id_type == IdType.IPV4_ADDR else 16):
            return False
        return ipaddress.ip_address(data) in san.get_values_for_type(x509.IPAddress)
    return False


def same_dns(a: str, b: str) -> bool:
    """DNS names compare case-insensitively (RFC 4343), a trailing dot ignored."""
    return a.rstrip(".").lower() == b.rstrip(".").lower() and bool(a.rstrip("."))


def same_email(a: str, b: str) -> bool:
    """RFC 5280 §7.5: the local part exactly, the domain case-insensitively."""
    local_a, at_a, domain_a = a.rpartition("@")
    local_b, at_b, domain_b = b.rpartition("@")
    return bool(at_a and at_b) and local_a == local_b and same_dns(domain_a, domain_b)


def same_dn(a: bytes, b: bytes) -> bool:
    """Whether two DER-encoded Names are the same DN (RFC 5280 §7.1, module docstring).
    Malformed DER matches only itself byte for byte."""
    if a == b:
        return True
    try:
        return _normalised_dn(a) == _normalised_dn(b)
    except ValueError:
        return False


def _san(cert: x509.Certificate) -> x509.SubjectAlternativeName | None:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None


def _upn(other: x509.OtherName) -> str | None:
    """The UPN in an otherName: [0] EXPLICIT UTF8String, which cryptography hands over as
    the DER of the UTF8String (tag 0x0C, length, bytes)."""
    if other.type_id != UPN:
        return None
    try:
        tag, value, rest = _tlv(other.value)
    except ValueError:
        return None
    if tag != 0x0C or rest:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _cn_fqdn(cert: x509.Certificate, san: x509.SubjectAlternativeName | None) -> str | None:
    """The subject's last CN when it is an FQDN and the certificate has no dNSName."""
    if san is not None and san.get_values_for_type(x509.DNSName):
        return None
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not cns:
        return None
    cn = cns[-1].value
    if not isinstance(cn, str) or not _is_fqdn(cn):
        return None
    return cn


def _is_fqdn(name: str) -> bool:
    labels = name.rstrip(".").split(".")
    return len(labels) >= 2 and all(
        0 < len(label) <= 63
        and label[0] != "-"
        and label[-1] != "-"
        and all(c.isascii() and (c.isalnum() or c in "-_") for c in label)
        for label in labels
    )


def _text(data: bytes) -> str | None:
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        return None


# DER Name (RFC 5280 §4.1.2.4): SEQUENCE OF SET OF SEQUENCE { OID, ANY }. cryptography
# parses Names only inside certificates, so IDi's DN is read here.
_STRING_TAGS = {
    0x0C: "utf-8",  # UTF8String
    0x13: "ascii",  # PrintableString
    0x16: "ascii",  # IA5String
    0x14: "latin-1",  # TeletexString, as everyone reads it
    0x1E: "utf-16-be",  # BMPString
    0x1C: "utf-32-be",  # UniversalString
}


def _tlv(data: bytes) -> tuple[int, bytes, bytes]:
    """One DER element: (tag, contents, what follows). Short tags only (Names use no others)."""
    if len(data) < 2 or data[0] & 0x1F == 0x1F:
        raise ValueError("truncated or long-form tag")
    tag, length, at = data[0], data[1], 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or len(data) < 2 + count:
            raise ValueError("bad length")
        length, at = int.from_bytes(data[2 : 2 + count], "big"), 2 + count
    if len(data) < at + length:
        raise ValueError("truncated")
    return tag, data[at : at + length], data[at + length :]


def _items(data: bytes) -> list[tuple[int, bytes]]:
    out = []
    while data:
        tag, value, data = _tlv(data)
        out.append((tag, value))
    return out


def _normalised_dn(der: bytes) -> tuple[frozenset[tuple[bytes, object]], ...]:
    tag, body, rest = _tlv(der)
    if tag != 0x30 or rest:
        raise ValueError("not a Name")
    rdns = []
    for set_tag, set_body in _items(body):
        if set_tag != 0x31:
            raise ValueError("not an RDN")
        avas = []
        for seq_tag, seq_body in _items(set_body):
            parts = _items(seq_body)
            if seq_tag != 0x30 or len(parts) != 2 or parts[0][0] != 0x06:
                raise ValueError("not an AttributeTypeAndValue")
            (_, oid), (value_tag, value) = parts
            avas.append((oid, _normalised_value(value_tag, value)))
        rdns.append(frozenset(avas))
    return tuple(rdns)


def _normalised_value(tag: int, value: bytes) -> object:
    encoding = _STRING_TAGS.get(tag)
    if encoding is None:
        return (tag, value)
    try:
        text = value.decode(encoding)
    except UnicodeDecodeError:
        return (tag, value)
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())

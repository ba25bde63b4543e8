"""Keys for Wireshark: a debugging aid that makes captured traffic readable.

Off by default; on with ``[debug] keylog = true`` or at run time (`vpnaaa keylog on`, the
admin API's POST /keylog). Switching it on is logged as a warning naming the files: anyone
who holds them and a capture reads the traffic, the users' EAP exchanges included. Three
files in ``[debug] keylog_dir`` (state_dir/keylog by default), appended to, mode 0600 and
the daemon user's (an existing file with another owner, a looser mode or a link is
refused, as :mod:`vpnaaa.private` refuses secret files):

``ikev2_decryption_table``
    One line per IKE SA, as its keys are derived (IKE_SA_INIT, RFC 7296 §2.14; an IKE
    rekey, §2.18): Wireshark's "IKEv2 Decryption Table" (packet-isakmp.c): SPIi, SPIr,
    SK_ei, SK_er, encryption algorithm, SK_ai, SK_ar, integrity algorithm. After a rekey
    the gateway started, SPIi is the gateway's (it is that SA's original initiator).
``esp_sa``
    Two lines per CHILD_SA, as it is installed: Wireshark's "ESP SAs" (packet-ipsec.c):
    protocol, source, destination, SPI, encryption algorithm and key (with the GCM salt,
    RFC 4106 §8.1), authentication algorithm and key.
``sslkeylog.txt``
    PEAP's TLS secrets in the NSS key log format (what SSLKEYLOGFILE writes), for
    Wireshark's ``tls.keylog_file``.

The directory is a Wireshark configuration directory as it is:
``WIRESHARK_CONFIG_DIR=DIR tshark -o esp.enable_encryption_decode:TRUE -o
tls.keylog_file:DIR/sslkeylog.txt -r capture.pcap``. Algorithms Wireshark cannot decrypt
(ChaCha20-Poly1305 in 4.0) get a comment line instead.
"""

from __future__ import annotations

import errno
import ipaddress
import os
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from vpnaaa import logs, private
from vpnaaa.ike.const import EncrId, IntegId
from vpnaaa.ike.effects import Keyed
from vpnaaa.kernel.installer import ChildSaSpec

if TYPE_CHECKING:
    from vpnaaa.ike.sa import IkeSa

log = logs.get("vpnaaa.keylog")

IKE_FILE = "ikev2_decryption_table"
ESP_FILE = "esp_sa"
TLS_FILE = "sslkeylog.txt"
FILES = (IKE_FILE, ESP_FILE, TLS_FILE)

# Wireshark's names (value strings of its UATs), by IKEv2 transform ID (RFC 7296 §3.3.2).
_IKE_GCM = {EncrId.AES_GCM_8: 8, EncrId.AES_GCM_12: 12, EncrId.AES_GCM_16: 16}
_IKE_INTEGRITY = {
    IntegId.HMAC_MD5_96: "HMAC_MD5_96 [RFC2403]",
    IntegId.HMAC_SHA1_96: "HMAC_SHA1_96 [RFC2404]",
    IntegId.HMAC_SHA2_256_128: "HMAC_SHA2_256_128 [RFC4868]",
    IntegId.HMAC_SHA2_384_192: "HMAC_SHA2_384_192 [RFC4868]",
    IntegId.HMAC_SHA2_512_256: "HMAC_SHA2_512_256 [RFC4868]",
}
_ESP_ENCRYPTION = {
    EncrId.NULL: "NULL",
    EncrId.DES3: "TripleDES-CBC [RFC2451]",
    EncrId.AES_CBC: "AES-CBC [RFC3602]",
    EncrId.AES_CTR: "AES-CTR [RFC3686]",
    EncrId.AES_GCM_8: "AES-GCM with 8 octet ICV [RFC4106]",
    EncrId.AES_GCM_12: "AES-GCM with 12 octet ICV [RFC4106]",
    EncrId.AES_GCM_16: "AES-GCM with 16 octet ICV [RFC4106]",
}
_ESP_AUTHENTICATION = {
    IntegId.HMAC_MD5_96: "HMAC-MD5-96 [RFC2403]",
    IntegId.HMAC_SHA1_96: "HMAC-SHA-1-96 [RFC2404]",
    IntegId.HMAC_SHA2_256_128: "HMAC-SHA-256-128 [RFC4868]",
    IntegId.HMAC_SHA2_384_192: "HMAC-SHA-384-192 [RFC4868]",
    IntegId.HMAC_SHA2_512_256: "HMAC-SHA-512-256 [RFC4868]",
}


def ike_encryption(encr: int, key_bits: int | None) -> str | None:
    """Wireshark's name of an IKE SA's cipher, or None when it has none."""
    if encr == EncrId.AES_CBC and key_bits in (128, 192, 256):
        return f"AES-CBC-{key_bits} [RFC3602]"
    if encr == EncrId.AES_CTR and key_bits in (128, 192, 256):
        return f"AES-CTR-{key_bits} [RFC5930]"
    if encr in _IKE_GCM and key_bits in (128, 192, 256):
        return f"AES-GCM-{key_bits} with {_IKE_GCM[EncrId(encr)]} octet ICV [RFC5282]"
    return {EncrId.DES3: "3DES [RFC2451]", EncrId.NULL: "NULL [RFC2410]"}.get(encr)


def ike_integrity(integ: int | None) -> str | None:
    """Wireshark's name of an IKE SA's integrity algorithm (NONE with AEAD), or None."""
    if integ in (None, IntegId.NONE):
        return "NONE [RFC4306]"
    return _IKE_INTEGRITY.get(integ)


def ike_line(keyed: Keyed) -> str:
    """One ``ikev2_decryption_table`` record (buffers in hex, names quoted, as Wireshark
    writes its UAT files)."""
    choice, keys = keyed.choice, keyed.keys
    integ = choice.integ.id if choice.integ else None
    encr, auth = ike_encryption(choice.encr.id, choice.encr.key_length), ike_integrity(integ)
    spis = f"{keyed.spi_i.hex()},{keyed.spi_r.hex()}"
    if encr is None or auth is None:
        return f"# {spis}: Wireshark cannot decrypt {choice.encr.name}/{integ}\n"
    return (
        f'{spis},{keys.sk_ei.hex()},{keys.sk_er.hex()},"{encr}",'
        f'{keys.sk_ai.hex()},{keys.sk_ar.hex()},"{auth}"\n'
    )


def esp_lines(spec: ChildSaSpec) -> str:
    """The two ``esp_sa`` records of a CHILD_SA: client to gateway, then back. Behind a
    NAT (UDP encapsulation, RFC 3948) the client's address is "*": a capture on its side
    of the NAT sees its private address, ours the public one."""
    encr = _ESP_ENCRYPTION.get(spec.encr_id)
    integ = spec.integ_id or IntegId.NONE  # none with AEAD
    auth = "NULL" if integ == IntegId.NONE else _ESP_AUTHENTICATION.get(integ)
    family = "IPv6" if ipaddress.ip_address(spec.local_address).version == 6 else "IPv4"
    client = "*" if spec.encapsulation is not None else spec.remote_address
    directions = (
        (client, spec.local_address, spec.inbound_spi, spec.inbound_encr_key,
         spec.inbound_integ_key),
        (spec.local_address, client, spec.outbound_spi, spec.outbound_encr_key,
         spec.outbound_integ_key),
    )  # fmt: skip
    if encr is None or auth is None:
        spis = f"{spec.inbound_spi:08x}/{spec.outbound_spi:08x}"
        return f"# {spis}: Wireshark cannot decrypt ENCR {spec.encr_id}/INTEG {spec.integ_id}\n"
    return "".join(
        f'"{family}","{source}","{destination}","0x{spi:08x}",'
        f'"{encr}","0x{encr_key.hex()}","{auth}","0x{integ_key.hex()}"\n'
        for source, destination, spi, encr_key, integ_key in directions
    )


class KeyLogError(Exception):
    """The key log cannot be switched on: which path, and why."""


class KeyLog:
    """The three key files, open for appending while the key log is on."""

    def __init__(self, directory: Path, owners: Collection[int]) -> None:
        self.directory = directory
        self.owners = frozenset(owners)
        self._fds: dict[str, int] = {}

    @property
    def enabled(self) -> bool:
        return bool(self._fds)

    def paths(self) -> list[Path]:
        return [self.directory / name for name in FILES]

    def enable(self, by: str) -> None:
        """Open (create) the files; a warning says where the keys go and what that means."""
        if self.enabled:
            return
        fds: dict[str, int] = {}
        try:
            for name in FILES:
                fds[name] = self._open(name)
        except KeyLogError:
            for fd in fds.values():
                os.close(fd)
            raise
        self._fds = fds
        log.warn(
            "Wireshark key log ON ({by}): IKE SA keys to {ike}, ESP SAs to {esp}, PEAP TLS "
            "secrets to {tls}; anyone with these files and a capture reads the VPN and PEAP "
            "traffic. Switch it off with `vpnaaa keylog off` and delete the files after use",
            by=by,
            ike=str(self.directory / IKE_FILE),
            esp=str(self.directory / ESP_FILE),
            tls=str(self.directory / TLS_FILE),
        )

    def disable(self, by: str) -> None:
        """Close the files; what they hold stays until someone deletes them."""
        if not self.enabled:
            return
        self._close()
        log.warn(
            "Wireshark key log off ({by}); {dir} still holds the keys logged so far",
            by=by,
            dir=str(self.directory),
        )

    def _close(self) -> None:
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)

    def _open(self, name: str) -> int:
        """``name`` in the directory (created 0700 if missing), for appending: created 0600,
        or an existing file checked like a secret file (:func:`vpnaaa.private.check`)."""
        path = self.directory / name
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(path, flags, 0o600)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise KeyLogError(f"{path}: a symbolic link; refused") from None
            raise KeyLogError(f"{e.filename or path}: {e.strerror}") from None
        try:
            private.owned_as(fd, self.directory)
            private.check(path, os.fstat(fd), self.owners)
        except private.PrivateFileError as e:
            os.close(fd)
            raise KeyLogError(str(e)) from None
        return fd

    def _write(self, name: str, text: str) -> None:
        fd = self._fds.get(name)
        if fd is None:
            return
        try:
            os.write(fd, text.encode())  # O_APPEND, unbuffered: one record, readable at once
        except OSError as e:
            self._close()
            log.error(
                "Wireshark key log off: cannot write {path}: {error}",
                path=str(self.directory / name),
                error=e.strerror,
            )

    def ike_sa(self, keyed: Keyed) -> None:
        """An IKE SA's keys (the edge runs the :class:`~vpnaaa.ike.effects.Keyed` effect)."""
        if self.enabled:
            self._write(IKE_FILE, ike_line(keyed))

    def esp_sa(self, spec: ChildSaSpec) -> None:
        """A CHILD_SA's two ESP SAs, at install time."""
        if self.enabled:
            self._write(ESP_FILE, esp_lines(spec))

    def tls(self, line: bytes) -> None:
        """One NSS key log line from OpenSSL's keylog callback (no newline)."""
        if self.enabled:
            self._write(TLS_FILE, line.decode("ascii", "replace") + "\n")

    def existing(self, sas: Iterable[IkeSa]) -> None:
        """Log the IKE SAs and CHILD_SAs already up (switched on at run time)."""
        for sa in sas:
            if sa.crypto is not None and sa.ike_choice is not None:
                self.ike_sa(Keyed.of(sa))
            for child in sa.children.values():
                self.esp_sa(child.spec)

    def close(self) -> None:
        """The daemon stops: close the files, without a warning."""
        self._close()

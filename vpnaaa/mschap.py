"""MS-CHAP primitives: RFC 2433 (v1), RFC 2759 (v2) and RFC 3079 (MPPE keys).

Pure functions on bytes. The NT hash is the only password-equivalent input: the user
store keeps it (never the password) for users who may authenticate with MS-CHAP. DES and
MD4 come from passlib, so no OpenSSL legacy provider is needed.
"""

from __future__ import annotations

import hashlib
import hmac

from passlib.crypto.des import des_encrypt_block
from passlib.crypto.digest import lookup_hash
from passlib.hash import nthash

_md4 = lookup_hash("md4").const

# RFC 2759 §8.7 magic constants for GenerateAuthenticatorResponse.
_AUTH_MAGIC1 = b"Magic server to client signing constant"
_AUTH_MAGIC2 = b"Pad to make it do more than one iteration"

# RFC 3079 §3.4 magic constants for the MPPE master and start keys.
_KEY_MAGIC1 = b"This is the MPPE Master Key"
_KEY_MAGIC2 = (
    b"On the client side, this is the send key; on the server side, it is the receive key."
)
_KEY_MAGIC3 = (
    b"On the client side, this is the receive key; on the server side, it is the send key."
)
_SHS_PAD1 = b"\x00" * 40
_SHS_PAD2 = b"\xf2" * 40


def strip_domain(username: str) -> str:
    """``DOMAIN\\user`` as Windows sends it becomes ``user``: the name the user store knows
    and the one ChallengeHash takes (RFC 2759 §8.2, as hostapd and FreeRADIUS strip it)."""
    return username.rpartition("\\")[2]


def nt_password_hash(password: str) -> bytes:
    """NtPasswordHash (RFC 2759 §8.3): MD4 of the UTF-16LE password."""
    return nthash.raw(password)


def hash_nt_password_hash(password_hash: bytes) -> bytes:
    """HashNtPasswordHash (RFC 2759 §8.4): MD4 of the NT hash."""
    return _md4(password_hash).digest()


def challenge_hash(peer_challenge: bytes, authenticator_challenge: bytes, username: bytes) -> bytes:
    """ChallengeHash (RFC 2759 §8.2): the 8-octet challenge MS-CHAPv2 signs.

    The user name is the one the peer sent, without any ``DOMAIN\\`` prefix.
    """
    return hashlib.sha1(peer_challenge + authenticator_challenge + username).digest()[:8]


def challenge_response(challenge: bytes, password_hash: bytes) -> bytes:
    """ChallengeResponse (RFC 2759 §8.5, RFC 2433 §A.5): three DES blocks, 24 octets."""
    key = password_hash + b"\x00" * 5
    return b"".join(des_encrypt_block(key[i : i + 7], challenge) for i in (0, 7, 14))


def generate_nt_response(
    authenticator_challenge: bytes, peer_challenge: bytes, username: bytes, password_hash: bytes
) -> bytes:
    """GenerateNTResponse (RFC 2759 §8.1), from the NT hash instead of the password."""
    return challenge_response(
        challenge_hash(peer_challenge, authenticator_challenge, username), password_hash
    )


def generate_authenticator_response(
    password_hash: bytes,
    nt_response: bytes,
    peer_challenge: bytes,
    authenticator_challenge: bytes,
    username: bytes,
) -> bytes:
    """GenerateAuthenticatorResponse (RFC 2759 §8.7): the ``S=<40 hex>`` string."""
    digest = hashlib.sha1(
        hash_nt_password_hash(password_hash) + nt_response + _AUTH_MAGIC1
    ).digest()
    challenge = challenge_hash(peer_challenge, authenticator_challenge, username)
    digest = hashlib.sha1(digest + challenge + _AUTH_MAGIC2).digest()
    return b"S=" + digest.hex().upper().encode()


def verify_nt_response(
    authenticator_challenge: bytes,
    peer_challenge: bytes,
    username: bytes,
    password_hash: bytes,
    nt_response: bytes,
) -> bool:
    """Check a peer's MS-CHAPv2 NT-Response in constant time."""
    expected = generate_nt_response(
        authenticator_challenge, peer_challenge, username, password_hash
    )
    return hmac.compare_digest(expected, nt_response)


def master_key(password_hash: bytes, nt_response: bytes) -> bytes:
    """GetMasterKey (RFC 3079 §3.4): 16 octets from the hashed NT hash and NT-Response."""
    return hashlib.sha1(hash_nt_password_hash(password_hash) + nt_response + _KEY_MAGIC1).digest()[
        :16
    ]


def asymmetric_start_key(
    master: bytes, *, is_send: bool, is_server: bool, length: int = 16
) -> bytes:
    """GetAsymmetricStartKey (RFC 3079 §3.4)."""
    magic = _KEY_MAGIC3 if is_send == is_server else _KEY_MAGIC2
    return hashlib.sha1(master + _SHS_PAD1 + magic + _SHS_PAD2).digest()[:length]


def server_mppe_keys(password_hash: bytes, nt_response: bytes) -> tuple[bytes, bytes]:
    """The server's (send, receive) MPPE start keys for MS-MPPE-Send-Key / -Recv-Key.

    RFC 2548 §2.4.2-2.4.3 carry them; RFC 3079 §3.4 derives them.
    """
    master = master_key(password_hash, nt_response)
    return (
        asymmetric_start_key(master, is_send=True, is_server=True),
        asymmetric_start_key(master, is_send=False, is_server=True),
    )


def mschapv1_session_keys(password_hash: bytes) -> tuple[bytes, bytes]:
    """The MS-CHAPv1 LM session key (8 octets, zero: no LM hash is stored) and the
    NT session key (RFC 3079 §2.1: the hashed NT hash) for MS-CHAP-MPPE-Keys.
    """
    return b"\x00" * 8, hash_nt_password_hash(password_hash)

"""IKEv2 wire constants (RFC 7296 §3 and the IANA "IKEv2 Parameters" registry).

Members are named as in the RFCs; values not listed here still decode (fields are plain
ints on the wire) and are shown as numbers.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag


class ExchangeType(IntEnum):
    """RFC 7296 §3.1."""

    IKE_SA_INIT = 34
    IKE_AUTH = 35
    CREATE_CHILD_SA = 36
    INFORMATIONAL = 37


class PayloadType(IntEnum):
    """RFC 7296 §3.2; SKF from RFC 7383 §2.5."""

    NONE = 0
    SA = 33
    KE = 34
    IDi = 35
    IDr = 36
    CERT = 37
    CERTREQ = 38
    AUTH = 39
    NONCE = 40
    NOTIFY = 41
    DELETE = 42
    VENDOR = 43
    TSi = 44
    TSr = 45
    SK = 46
    CP = 47
    EAP = 48
    SKF = 53


class HeaderFlag(IntFlag):
    """RFC 7296 §3.1: the I(nitiator), V(ersion) and R(esponse) bits."""

    INITIATOR = 0x08
    VERSION = 0x10
    RESPONSE = 0x20


class ProtocolId(IntEnum):
    """RFC 7296 §3.3.1."""

    IKE = 1
    AH = 2
    ESP = 3


class TransformType(IntEnum):
    """RFC 7296 §3.3.2."""

    ENCR = 1
    PRF = 2
    INTEG = 3
    DH = 4
    ESN = 5


class EncrId(IntEnum):
    """Transform Type 1 IDs (RFC 7296 §3.3.2; RFC 4106 GCM, RFC 5930 CTR, RFC 7634)."""

    DES3 = 3
    NULL = 11
    AES_CBC = 12
    AES_CTR = 13
    AES_GCM_8 = 18
    AES_GCM_12 = 19
    AES_GCM_16 = 20
    CHACHA20_POLY1305 = 28


class PrfId(IntEnum):
    """Transform Type 2 IDs (RFC 7296 §3.3.2, RFC 4868)."""

    HMAC_MD5 = 1
    HMAC_SHA1 = 2
    AES128_XCBC = 4
    HMAC_SHA2_256 = 5
    HMAC_SHA2_384 = 6
    HMAC_SHA2_512 = 7


class IntegId(IntEnum):
    """Transform Type 3 IDs (RFC 7296 §3.3.2, RFC 4868)."""

    NONE = 0
    HMAC_MD5_96 = 1
    HMAC_SHA1_96 = 2
    AES_XCBC_96 = 5
    HMAC_SHA2_256_128 = 12
    HMAC_SHA2_384_192 = 13
    HMAC_SHA2_512_256 = 14


class DhGroup(IntEnum):
    """Transform Type 4 IDs (RFC 7296 §3.3.2, RFC 3526, RFC 5903, RFC 8031)."""

    NONE = 0
    MODP768 = 1
    MODP1024 = 2
    MODP1536 = 5
    MODP2048 = 14
    MODP3072 = 15
    MODP4096 = 16
    MODP6144 = 17
    MODP8192 = 18
    ECP256 = 19
    ECP384 = 20
    ECP521 = 21
    CURVE25519 = 31
    CURVE448 = 32


class Esn(IntEnum):
    """Transform Type 5 IDs (RFC 7296 §3.3.2)."""

    NO = 0
    YES = 1


class TransformAttribute(IntEnum):
    """RFC 7296 §3.3.5; Key Length is always sent in TV format (the AF bit set)."""

    KEY_LENGTH = 14


class IdType(IntEnum):
    """RFC 7296 §3.5."""

    IPV4_ADDR = 1
    FQDN = 2
    RFC822_ADDR = 3
    IPV6_ADDR = 5
    DER_ASN1_DN = 9
    DER_ASN1_GN = 10
    KEY_ID = 11


class AuthMethod(IntEnum):
    """RFC 7296 §3.8, RFC 4754 (ECDSA), RFC 7427 (Digital Signature)."""

    RSA_SIG = 1
    SHARED_KEY = 2
    DSS = 3
    ECDSA_256 = 9
    ECDSA_384 = 10
    ECDSA_521 = 11
    DIGITAL_SIGNATURE = 14


class HashAlgorithm(IntEnum):
    """SIGNATURE_HASH_ALGORITHMS values (RFC 7427 §4; IDENTITY from RFC 8420)."""

    SHA1 = 1
    SHA2_256 = 2
    SHA2_384 = 3
    SHA2_512 = 4
    IDENTITY = 5


class CertEncoding(IntEnum):
    """RFC 7296 §3.6."""

    PKCS7_WRAPPED_X509 = 1
    PGP = 2
    DNS_SIGNED_KEY = 3
    X509_SIGNATURE = 4
    KERBEROS_TOKEN = 6
    CRL = 7
    ARL = 8
    SPKI = 9
    X509_ATTRIBUTE = 10
    RAW_RSA_KEY = 11
    HASH_URL_X509_CERT = 12
    HASH_URL_X509_BUNDLE = 13


class TsType(IntEnum):
    """RFC 7296 §3.13.1."""

    IPV4_ADDR_RANGE = 7
    IPV6_ADDR_RANGE = 8


class CfgType(IntEnum):
    """RFC 7296 §3.15."""

    REQUEST = 1
    REPLY = 2
    SET = 3
    ACK = 4


class CfgAttribute(IntEnum):
    """RFC 7296 §3.15.1 (values 5, 9 and 11 are retired)."""

    INTERNAL_IP4_ADDRESS = 1
    INTERNAL_IP4_NETMASK = 2
    INTERNAL_IP4_DNS = 3
    INTERNAL_IP4_NBNS = 4
    INTERNAL_IP4_DHCP = 6
    APPLICATION_VERSION = 7
    INTERNAL_IP6_ADDRESS = 8
    INTERNAL_IP6_DNS = 10
    INTERNAL_IP6_DHCP = 12
    INTERNAL_IP4_SUBNET = 13
    SUPPORTED_ATTRIBUTES = 14
    INTERNAL_IP6_SUBNET = 15


class NotifyType(IntEnum):
    """Notify Message Types: errors below 16384, status types above (RFC 7296 §3.10.1)."""

    # Error types (RFC 7296 §3.10.1)
    UNSUPPORTED_CRITICAL_PAYLOAD = 1
    INVALID_IKE_SPI = 4
    INVALID_MAJOR_VERSION = 5
    INVALID_SYNTAX = 7
    INVALID_MESSAGE_ID = 9
    INVALID_SPI = 11
    NO_PROPOSAL_CHOSEN = 14
    INVALID_KE_PAYLOAD = 17
    AUTHENTICATION_FAILED = 24
    SINGLE_PAIR_REQUIRED = 34
    NO_ADDITIONAL_SAS = 35
    INTERNAL_ADDRESS_FAILURE = 36
    FAILED_CP_REQUIRED = 37
    TS_UNACCEPTABLE = 38
    INVALID_SELECTORS = 39
    TEMPORARY_FAILURE = 43
    CHILD_SA_NOT_FOUND = 44
    # Status types (RFC 7296 §3.10.1)
    INITIAL_CONTACT = 16384
    SET_WINDOW_SIZE = 16385
    ADDITIONAL_TS_POSSIBLE = 16386
    IPCOMP_SUPPORTED = 16387
    NAT_DETECTION_SOURCE_IP = 16388
    NAT_DETECTION_DESTINATION_IP = 16389
    COOKIE = 16390
    USE_TRANSPORT_MODE = 16391
    HTTP_CERT_LOOKUP_SUPPORTED = 16392
    REKEY_SA = 16393
    ESP_TFC_PADDING_NOT_SUPPORTED = 16394
    NON_FIRST_FRAGMENTS_ALSO = 16395
    # MOBIKE (RFC 4555)
    MOBIKE_SUPPORTED = 16396
    ADDITIONAL_IP4_ADDRESS = 16397
    ADDITIONAL_IP6_ADDRESS = 16398
    NO_ADDITIONAL_ADDRESSES = 16399
    UPDATE_SA_ADDRESSES = 16400
    COOKIE2 = 16401
    NO_NATS_ALLOWED = 16402
    # Extensions
    AUTH_LIFETIME = 16403  # RFC 4478
    MULTIPLE_AUTH_SUPPORTED = 16404  # RFC 4739
    ANOTHER_AUTH_FOLLOWS = 16405  # RFC 4739
    REDIRECT_SUPPORTED = 16406  # RFC 5685
    REDIRECT = 16407  # RFC 5685
    REDIRECTED_FROM = 16408  # RFC 5685
    EAP_ONLY_AUTHENTICATION = 16417  # RFC 5998
    CHILDLESS_IKEV2_SUPPORTED = 16418  # RFC 6023
    IKEV2_FRAGMENTATION_SUPPORTED = 16430  # RFC 7383
    SIGNATURE_HASH_ALGORITHMS = 16431  # RFC 7427

"""XFRM netlink: the codec byte for byte against iproute2, the installer's SAs and policies,
and the host kernel in a private network namespace.

The byte vectors were captured from iproute2 6.1.0 (Debian bookworm) with

    unshare -n strace -f -e trace=sendmsg -e write=all -s 0 sh -c "<command>"

each the whole netlink message as sent (struct nlmsghdr included; the sequence number is
iproute2's and is not compared). The SA adds were refused by this kernel (no ESP): the
bytes are what iproute2 sent.

The kernel tests move the test's thread (the reactor's) into a fresh network namespace
(unshare(CLONE_NEWNET)) and back again afterwards; the namespace has no name and vanishes
with its last socket, so nothing is left behind even if a test dies. ``ip`` commands run in
it as children of that thread. Only documentation addresses (RFC 5737) are used. This host
kernel has XFRM but no ESP: SAs are refused with EPROTONOSUPPORT, ALLOCSPI's larval SAs
and policies work. Where ESP exists (the VM), the same tests compare SAs with iproute2's.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import subprocess
import time
from dataclasses import replace
from ipaddress import ip_address, ip_network
from typing import NamedTuple

from twisted.internet import defer, reactor
from twisted.internet.error import ConnectionDone
from twisted.internet.task import deferLater
from twisted.trial import unittest

from vpnaaa.ike import transforms
from vpnaaa.ike.const import EncrId, IntegId
from vpnaaa.kernel import xfrm
from vpnaaa.kernel.installer import ChildSaSpec, InstallError, NullInstaller, Selector
from vpnaaa.kernel.netlink import NetlinkSocket
from vpnaaa.kernel.xfrm import NetlinkError, NetlinkMessage, NlmFlag
from vpnaaa.kernel.xfrm_installer import (
    UDP_ENCAP,
    ExpireEvent,
    KernelInstaller,
    SaCounters,
    bypass_ipsec,
    child_policies,
    child_sas,
    espinudp,
    port_masks,
    priority,
)

A = ip_address
N = ip_network
LOCAL, REMOTE = A("192.0.2.1"), A("198.51.100.1")
REQUEST_ACK = NlmFlag.REQUEST | NlmFlag.ACK


class Captured(NamedTuple):
    """An ``ip`` command and the netlink message (hex) it sent."""

    command: str
    hex: str

    @property
    def raw(self) -> bytes:
        return bytes.fromhex(self.hex)

    @property
    def message(self) -> NetlinkMessage:
        [message] = xfrm.decode_messages(self.raw)
        return message


SA_CBC = Captured(
    "ip xfrm state add src 192.0.2.1 dst 198.51.100.1 proto esp spi 0x00001234 reqid 7 "
    "mode tunnel replay-window 32 enc 'cbc(aes)' "
    "0x000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f auth-trunc "
    "'hmac(sha256)' 0x202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f "
    "128 limit time-soft 3240 limit time-hard 3600",
    "c401000010000500788c0c6b0000000000000000000000000000000000000000000000000000000000000000"
    "00000000000000000000000000000000000000000000000000000000c6336401000000000000000000000000"
    "0000123432000000c0000201000000000000000000000000ffffffffffffffffffffffffffffffffffffffff"
    "ffffffffffffffffffffffffa80c000000000000100e00000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000007000000020001200000000000000000680002006362632861657329000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "00010000000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f6c001400686d6163"
    "2873686132353629000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000001000080000000202122232425262728292a2b2c2d2e2f30313233"
    "3435363738393a3b3c3d3e3f",
)
SA_GCM = Captured(
    "ip xfrm state add src 198.51.100.1 dst 192.0.2.1 proto esp spi 0xc0ffee01 reqid 8 "
    "mode tunnel flag esn replay-window 128 aead 'rfc4106(gcm(aes))' "
    "0x000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1fa0a1a2a3 128 encap "
    "espinudp 4500 4500 0.0.0.0 mark 0x10 mask 0xff if_id 0x5 extra-flag dont-encap-dscp",
    "b401000010000500788c0c6b0000000000000000000000000000000000000000000000000000000000000000"
    "00000000000000000000000000000000000000000000000000000000c0000201000000000000000000000000"
    "c0ffee0132000000c6336401000000000000000000000000ffffffffffffffffffffffffffffffffffffffff"
    "ffffffffffffffffffffffff0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000800000002000100800000000000000070001200726663343130362867636d286165732929000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "2001000080000000000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1fa0a1a2a3"
    "1c0004000200119411940000000000000000000000000000000000001c001700040000000000000000000000"
    "00000000000000008000000008001800010000000c00150010000000ff00000008001f0005000000",
)
UPDSA_CHACHA = Captured(
    "ip xfrm state update src 192.0.2.1 dst 198.51.100.1 proto esp spi 0x00000105 reqid 9 "
    "mode tunnel aead 'rfc7539esp(chacha20,poly1305)' "
    "0x000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1fa0a1a2a3 128",
    "600100001a000500788c0c6b0000000000000000000000000000000000000000000000000000000000000000"
    "00000000000000000000000000000000000000000000000000000000c6336401000000000000000000000000"
    "0000010532000000c0000201000000000000000000000000ffffffffffffffffffffffffffffffffffffffff"
    "ffffffffffffffffffffffff0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000900000002000100000000000000000070001200726663373533396573702863686163686132302c"
    "706f6c7931333035290000000000000000000000000000000000000000000000000000000000000000000000"
    "2001000080000000000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1fa0a1a2a3",
)
DELSA = Captured(
    "ip xfrm state delete src 192.0.2.1 dst 198.51.100.1 proto esp spi 0x00001234",
    "3c00000011000500788c0c6b00000000c6336401000000000000000000000000000012340200320014000d00"
    "c0000201000000000000000000000000",
)
GETSA = Captured(
    "ip xfrm state get src 192.0.2.1 dst 198.51.100.1 proto esp spi 0x00001234 mark 0x10 mask 0xff",
    "4800000012000100788c0c6b00000000c6336401000000000000000000000000000012340200320014000d00"
    "c00002010000000000000000000000000c00150010000000ff000000",
)
ALLOCSPI = Captured(
    "ip xfrm state allocspi src 192.0.2.1 dst 198.51.100.1 proto esp reqid 7 mode tunnel "
    "min 0x100 max 0xffffffff",
    "f800000016000100788c0c6b0000000000000000000000000000000000000000000000000000000000000000"
    "00000000000000000000000000000000000000000000000000000000c6336401000000000000000000000000"
    "0000000032000000c00002010000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000700000002000100000000000000000000010000ffffffff",
)
FLUSHSA = Captured(
    "ip xfrm state flush proto esp",
    "110000001c000500788c0c6b0000000032",
)
DUMP_POLICY = Captured(
    "ip xfrm policy list",
    "1000000015000103788c0c6b00000000",
)
POLICY_OUT = Captured(
    "ip xfrm policy add src 203.0.113.0/24 dst 198.51.100.7/32 proto udp sport 500 dport "
    "4500 dir out priority 1000 tmpl src 192.0.2.1 dst 198.51.100.1 proto esp reqid 7 "
    "mode tunnel",
    "fc00000013000500788c0c6b00000000c6336407000000000000000000000000cb0071000000000000000000"
    "000000001194ffff01f4ffff02002018110000000000000000000000ffffffffffffffffffffffffffffffff"
    "ffffffffffffffffffffffffffffffff00000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000e803000000000000"
    "010000000000000044000500c6336401000000000000000000000000000000003200000002000000c0000201"
    "0000000000000000000000000700000001000000ffffffffffffffffffffffff",
)
POLICY_FWD = Captured(
    "ip xfrm policy add src 198.51.100.7/32 dst 203.0.113.0/24 dir fwd priority 1000 mark "
    "0x10 mask 0xff if_id 0x5 tmpl src 198.51.100.1 dst 192.0.2.1 proto esp reqid 7 mode "
    "tunnel",
    "1001000013000500788c0c6b00000000cb007100000000000000000000000000c63364070000000000000000"
    "00000000000000000000000002001820000000000000000000000000ffffffffffffffffffffffffffffffff"
    "ffffffffffffffffffffffffffffffff00000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000e803000000000000"
    "020000000000000044000500c0000201000000000000000000000000000000003200000002000000c6336401"
    "0000000000000000000000000700000001000000ffffffffffffffffffffffff0c00150010000000ff000000"
    "08001f0005000000",
)
UPDPOLICY_IN = Captured(
    "ip xfrm policy update src 198.51.100.7/32 dst 203.0.113.0/24 dir in tmpl src "
    "198.51.100.1 dst 192.0.2.1 proto esp reqid 7 mode tunnel",
    "fc00000019000500788c0c6b00000000cb007100000000000000000000000000c63364070000000000000000"
    "00000000000000000000000002001820000000000000000000000000ffffffffffffffffffffffffffffffff"
    "ffffffffffffffffffffffffffffffff00000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000044000500c0000201000000000000000000000000000000003200000002000000c6336401"
    "0000000000000000000000000700000001000000ffffffffffffffffffffffff",
)
DELPOLICY = Captured(
    "ip xfrm policy delete src 198.51.100.7/32 dst 203.0.113.0/24 dir in",
    "5000000014000500788c0c6b00000000cb007100000000000000000000000000c63364070000000000000000"
    "000000000000000000000000020018200000000000000000000000000000000000000000",
)
GETPOLICY = Captured(
    "ip xfrm policy get src 198.51.100.7/32 dst 203.0.113.0/24 dir fwd mark 0x10 mask "
    "0xff if_id 0x5",
    "6400000015000100788c0c6b00000000cb007100000000000000000000000000c63364070000000000000000"
    "0000000000000000000000000200182000000000000000000000000000000000020000000c00150010000000"
    "ff00000008001f0005000000",
)
INSTALLER_INBOUND = Captured(
    "ip xfrm state add src 198.51.100.1 dst 192.0.2.1 proto esp spi 0xc1000001 reqid 7 "
    "mode tunnel flag af-unspec esn replay-window 32 enc 'cbc(aes)' "
    "0x404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f auth-trunc "
    "'hmac(sha256)' 0x606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f "
    "128 encap espinudp 31337 4500 0.0.0.0 limit time-soft 3240 limit time-hard 3600",
    "fc01000010000500be8d0c6b0000000000000000000000000000000000000000000000000000000000000000"
    "00000000000000000000000000000000000000000000000000000000c0000201000000000000000000000000"
    "c100000132000000c6336401000000000000000000000000ffffffffffffffffffffffffffffffffffffffff"
    "ffffffffffffffffffffffffa80c000000000000100e00000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000700000002000100a000000000000000680002006362632861657329000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "00010000404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f6c001400686d6163"
    "2873686132353629000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000001000080000000606162636465666768696a6b6c6d6e6f70717273"
    "7475767778797a7b7c7d7e7f1c00040002007a6911940000000000000000000000000000000000001c001700"
    "010000000000000000000000000000000000000020000000",
)
INSTALLER_OUTBOUND = Captured(
    "ip xfrm state add src 192.0.2.1 dst 198.51.100.1 proto esp spi 0xc2000002 reqid 7 "
    "mode tunnel flag af-unspec esn replay-window 32 enc 'cbc(aes)' "
    "0x808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f auth-trunc "
    "'hmac(sha256)' 0xa0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf "
    "128 encap espinudp 4500 31337 0.0.0.0 limit time-soft 3240 limit time-hard 3600",
    "fc01000010000500be8d0c6b0000000000000000000000000000000000000000000000000000000000000000"
    "00000000000000000000000000000000000000000000000000000000c6336401000000000000000000000000"
    "c200000232000000c0000201000000000000000000000000ffffffffffffffffffffffffffffffffffffffff"
    "ffffffffffffffffffffffffa80c000000000000100e00000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000700000002000100a000000000000000680002006362632861657329000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "00010000808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f6c001400686d6163"
    "2873686132353629000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000001000080000000a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3"
    "b4b5b6b7b8b9babbbcbdbebf1c000400020011947a690000000000000000000000000000000000001c001700"
    "010000000000000000000000000000000000000020000000",
)
INSTALLER_OUT_POLICY = Captured(
    "ip xfrm policy update src 203.0.113.0/24 dst 198.51.100.7/32 dir out priority 10803 "
    "tmpl src 192.0.2.1 dst 198.51.100.1 proto esp reqid 7 mode tunnel",
    "fc00000019000500be8d0c6b00000000c6336407000000000000000000000000cb0071000000000000000000"
    "00000000000000000000000002002018000000000000000000000000ffffffffffffffffffffffffffffffff"
    "ffffffffffffffffffffffffffffffff00000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000332a000000000000"
    "010000000000000044000500c6336401000000000000000000000000000000003200000002000000c0000201"
    "0000000000000000000000000700000001000000ffffffffffffffffffffffff",
)


def key(start: int, n: int = 32) -> bytes:
    return bytes(range(start, start + n))


SPEC = ChildSaSpec(
    reqid=7,
    local_address="192.0.2.1",
    remote_address="198.51.100.1",
    inbound_spi=0xC1000001,
    outbound_spi=0xC2000002,
    encr_id=EncrId.AES_CBC,
    encr_key_length=256,
    integ_id=IntegId.HMAC_SHA2_256_128,
    inbound_encr_key=key(0x40),
    inbound_integ_key=key(0x60),
    outbound_encr_key=key(0x80),
    outbound_integ_key=key(0xA0),
    local_selectors=(Selector(N("203.0.113.0/24")),),
    remote_selectors=(Selector(N("198.51.100.7/32")),),
    esn=True,
    encapsulation=(4500, 31337),
    soft_lifetime=3240,
    hard_lifetime=3600,
)


class StructTests(unittest.TestCase):
    """sizeof() of the linux/xfrm.h structs on x86-64, which the kernel checks."""

    def test_sizes(self):
        sel = xfrm.Selector.between(N("192.0.2.0/24"), N("198.51.100.0/24"))
        info = xfrm.SaInfo(REMOTE, LOCAL, 0x100)
        self.assertEqual(len(sel.encode()), 56)
        self.assertEqual(len(info.encode()), 224)
        self.assertEqual(len(xfrm.SaId(REMOTE, 1).encode()), 24)
        self.assertEqual(len(xfrm.PolicyInfo(sel, xfrm.Dir.OUT).encode()), 168)
        self.assertEqual(len(xfrm.PolicyId(sel, xfrm.Dir.OUT).encode()), 64)
        self.assertEqual(len(xfrm.Template(REMOTE, LOCAL, 1).encode()), 64)
        self.assertEqual(len(xfrm.Encap(4500, 4500).encode()), 24)
        self.assertEqual(len(xfrm.alloc_spi(LOCAL, REMOTE).body), 232)  # xfrm_userspi_info

    def test_ipv6_round_trip(self):
        sel = xfrm.Selector.between(N("2001:db8::/32"), N("2001:db8:1::1/128"), 58, (128, 0xFFFF))
        self.assertEqual(xfrm.Selector.decode(sel.encode()), sel)
        info = xfrm.SaInfo(A("2001:db8::1"), A("2001:db8::2"), 0x1234, selector=sel)
        self.assertEqual(xfrm.SaInfo.decode(info.encode()), info)
        tmpl = xfrm.Template(A("2001:db8::1"), A("2001:db8::2"), 9)
        self.assertEqual(xfrm.Template.decode(tmpl.encode()), tmpl)


class IproutBytesTests(unittest.TestCase):
    """Our encoder and iproute2 produce the same octets for the same SA or policy, and our
    decoder reads iproute2's back into the same values."""

    def assertSame(self, captured: Captured, request: xfrm.Request, flags: int = REQUEST_ACK):
        sent = captured.message
        self.assertEqual(request.type, sent.type)
        self.assertEqual(sent.flags, flags)
        self.assertEqual(request.body.hex(), sent.body.hex())
        whole = xfrm.encode_message(request.type, sent.flags, sent.seq, request.body, sent.pid)
        self.assertEqual(whole, captured.raw)

    def test_sa_cbc_sha256(self):
        sa = xfrm.Sa(
            xfrm.SaInfo(
                REMOTE,
                LOCAL,
                0x1234,
                reqid=7,
                replay_window=32,
                lifetime=xfrm.Lifetime(soft_add_expires=3240, hard_add_expires=3600),
            ),
            crypt=xfrm.Algo("cbc(aes)", key(0)),
            auth=xfrm.AlgoAuth("hmac(sha256)", key(0x20), 128),
        )
        self.assertSame(SA_CBC, xfrm.new_sa(sa))
        self.assertEqual(xfrm.decode(SA_CBC.message), sa)

    def test_sa_gcm_nat_t_esn_mark_if_id(self):
        sa = xfrm.Sa(
            xfrm.SaInfo(LOCAL, REMOTE, 0xC0FFEE01, reqid=8, flags=xfrm.SaFlag.ESN),
            aead=xfrm.AlgoAead("rfc4106(gcm(aes))", key(0) + bytes.fromhex("a0a1a2a3"), 128),
            encap=xfrm.Encap(4500, 4500),
            replay_esn=xfrm.ReplayEsn(128),
            extra_flags=xfrm.SaExtraFlag.DONT_ENCAP_DSCP,
            mark=xfrm.Mark(0x10, 0xFF),
            if_id=5,
        )
        self.assertSame(SA_GCM, xfrm.new_sa(sa))
        decoded = xfrm.decode(SA_GCM.message)
        self.assertEqual(decoded, sa)
        assert isinstance(decoded, xfrm.Sa) and decoded.aead is not None
        self.assertEqual(len(decoded.aead.key), 36)  # 256-bit key and the 32-bit salt
        self.assertEqual(decoded.replay_esn, xfrm.ReplayEsn(128))

    def test_updsa_chacha20_poly1305(self):
        aead = xfrm.AlgoAead("rfc7539esp(chacha20,poly1305)", key(0) + key(0xA0, 4), 128)
        sa = xfrm.Sa(xfrm.SaInfo(REMOTE, LOCAL, 0x105, reqid=9), aead=aead)
        self.assertSame(UPDSA_CHACHA, xfrm.new_sa(sa, update=True))

    def test_delsa_getsa(self):
        id = xfrm.SaId(REMOTE, 0x1234)
        self.assertSame(DELSA, xfrm.del_sa(id, LOCAL))
        self.assertSame(GETSA, xfrm.get_sa(id, LOCAL, xfrm.Mark(0x10, 0xFF)), NlmFlag.REQUEST)
        self.assertEqual(xfrm.SaId.decode(DELSA.message.body), id)

    def test_allocspi(self):
        request = xfrm.alloc_spi(LOCAL, REMOTE, reqid=7, spi_min=0x100, spi_max=0xFFFFFFFF)
        self.assertSame(ALLOCSPI, request, NlmFlag.REQUEST)

    def test_flushsa(self):
        self.assertSame(FLUSHSA, xfrm.flush_sa(xfrm.Proto.ESP))

    def test_policy_dump(self):
        request = xfrm.dump_policy()
        self.assertTrue(request.dump)
        self.assertSame(DUMP_POLICY, request, NlmFlag.REQUEST | NlmFlag.DUMP)

    def test_policy_out_with_ports(self):
        sel = xfrm.Selector.between(
            N("203.0.113.0/24"), N("198.51.100.7/32"), 17, (500, 0xFFFF), (4500, 0xFFFF)
        )
        policy = xfrm.Policy(
            xfrm.PolicyInfo(sel, xfrm.Dir.OUT, priority=1000),
            (xfrm.Template(REMOTE, LOCAL, 7),),
        )
        self.assertSame(POLICY_OUT, xfrm.new_policy(policy))
        self.assertEqual(xfrm.decode(POLICY_OUT.message), policy)

    def test_policy_fwd_mark_if_id(self):
        sel = xfrm.Selector.between(N("198.51.100.7/32"), N("203.0.113.0/24"))
        policy = xfrm.Policy(
            xfrm.PolicyInfo(sel, xfrm.Dir.FWD, priority=1000),
            (xfrm.Template(LOCAL, REMOTE, 7),),
            xfrm.Mark(0x10, 0xFF),
            5,
        )
        self.assertSame(POLICY_FWD, xfrm.new_policy(policy))
        self.assertEqual(xfrm.decode(POLICY_FWD.message), policy)

    def test_updpolicy_delpolicy_getpolicy(self):
        sel = xfrm.Selector.between(N("198.51.100.7/32"), N("203.0.113.0/24"))
        policy = xfrm.Policy(xfrm.PolicyInfo(sel, xfrm.Dir.IN), (xfrm.Template(LOCAL, REMOTE, 7),))
        self.assertSame(UPDPOLICY_IN, xfrm.new_policy(policy, update=True))
        self.assertSame(DELPOLICY, xfrm.del_policy(xfrm.PolicyId(sel, xfrm.Dir.IN)))
        request = xfrm.get_policy(xfrm.PolicyId(sel, xfrm.Dir.FWD), xfrm.Mark(0x10, 0xFF), 5)
        self.assertSame(GETPOLICY, request, NlmFlag.REQUEST)

    def test_installer_sas(self):
        """The installer's two SAs for SPEC (AES-CBC-256, HMAC-SHA256-128, ESN, NAT-T with
        the peer on port 31337, lifetimes 3240/3600 s) are iproute2's."""
        inbound, outbound = child_sas(SPEC)
        self.assertSame(INSTALLER_INBOUND, xfrm.new_sa(inbound))
        self.assertSame(INSTALLER_OUTBOUND, xfrm.new_sa(outbound))

    def test_installer_out_policy(self):
        [out] = [p for p in child_policies(SPEC) if p.info.dir == xfrm.Dir.OUT]
        self.assertSame(INSTALLER_OUT_POLICY, xfrm.new_policy(out, update=True))


class FramingTests(unittest.TestCase):
    def test_messages_and_attributes(self):
        one = xfrm.encode_message(0x10, 5, 1, xfrm.encode_attrs([(1, b"abc"), (2, b"\x01")]))
        two = xfrm.encode_message(3, 2, 1, b"\0\0\0\0")
        messages = list(xfrm.decode_messages(one + bytes(xfrm.align4(len(one)) - len(one)) + two))
        self.assertEqual([m.type for m in messages], [0x10, 3])
        self.assertEqual(xfrm.decode_attrs(messages[0].body), {1: b"abc", 2: b"\x01"})
        with self.assertRaises(ValueError):
            list(xfrm.decode_messages(one[:-1]))

    def test_extended_ack(self):
        """struct nlmsgerr with NLM_F_CAPPED (only the request's header) and NLM_F_ACK_TLVS."""
        request_header = xfrm.NLMSG_HDR.pack(452, 0x10, 5, 9, 0)
        tlvs = xfrm.encode_attrs([(1, b"Requested type not found\0"), (2, b"\x10\0\0\0")])
        body = (-errno.EPROTONOSUPPORT).to_bytes(4, "little", signed=True) + request_header + tlvs
        flags = NlmFlag.CAPPED | NlmFlag.ACK_TLVS
        message = NetlinkMessage(xfrm.NlmsgType.ERROR, flags, 9, 0, body)
        self.assertEqual(
            xfrm.decode_ack(message), (errno.EPROTONOSUPPORT, "Requested type not found", 16)
        )
        error = NetlinkError(errno.EPROTONOSUPPORT, "XFRM_MSG_NEWSA", "Requested type not found")
        self.assertEqual(
            str(error),
            "XFRM_MSG_NEWSA: Protocol not supported (EPROTONOSUPPORT): Requested type not found",
        )


class AlgorithmTests(unittest.TestCase):
    """IKEv2 transform IDs to kernel algorithms (linux crypto API names)."""

    def test_aead(self):
        gcm = xfrm.esp_algorithms(EncrId.AES_GCM_16, 256, None, key(0, 36), b"")
        self.assertEqual(gcm, xfrm.EspAlgorithms(aead=xfrm.AlgoAead(_GCM, key(0, 36), 128)))
        self.assertEqual(gcm.aead.encode()[64:72], (288).to_bytes(4, "little") + b"\x80\0\0\0")
        gcm8 = xfrm.esp_algorithms(EncrId.AES_GCM_8, 128, IntegId.NONE, key(0, 20), b"")
        self.assertEqual(gcm8.aead, xfrm.AlgoAead(_GCM, key(0, 20), 64))
        gcm12 = xfrm.esp_algorithms(EncrId.AES_GCM_12, 192, None, key(0, 28), b"")
        self.assertEqual(gcm12.aead.icv_bits, 96)
        chacha = xfrm.esp_algorithms(EncrId.CHACHA20_POLY1305, None, None, key(0, 36), b"")
        self.assertEqual(
            chacha.aead, xfrm.AlgoAead("rfc7539esp(chacha20,poly1305)", key(0, 36), 128)
        )

    def test_cbc_and_hmac(self):
        cases = [
            (EncrId.AES_CBC, 128, IntegId.HMAC_SHA1_96, 16, "cbc(aes)", "hmac(sha1)", 20, 96),
            (
                EncrId.AES_CBC,
                256,
                IntegId.HMAC_SHA2_256_128,
                32,
                "cbc(aes)",
                "hmac(sha256)",
                32,
                128,
            ),
            (
                EncrId.AES_CBC,
                192,
                IntegId.HMAC_SHA2_384_192,
                24,
                "cbc(aes)",
                "hmac(sha384)",
                48,
                192,
            ),
            (
                EncrId.DES3,
                None,
                IntegId.HMAC_SHA2_512_256,
                24,
                "cbc(des3_ede)",
                "hmac(sha512)",
                64,
                256,
            ),
            (EncrId.DES3, None, IntegId.HMAC_MD5_96, 24, "cbc(des3_ede)", "hmac(md5)", 16, 96),
        ]
        for encr, bits, integ, klen, cipher, mac, mlen, trunc in cases:
            got = xfrm.esp_algorithms(encr, bits, integ, key(0, klen), key(0x80, mlen))
            self.assertEqual(got.crypt, xfrm.Algo(cipher, key(0, klen)))
            self.assertEqual(got.auth, xfrm.AlgoAuth(mac, key(0x80, mlen), trunc))
            self.assertIsNone(got.aead)
        ctr = xfrm.esp_algorithms(EncrId.AES_CTR, 128, IntegId.HMAC_SHA1_96, key(0, 20), key(0, 20))
        self.assertEqual(ctr.crypt, xfrm.Algo("rfc3686(ctr(aes))", key(0, 20)))  # key | nonce

    def test_refused(self):
        bad = [
            (EncrId.AES_CBC, 256, IntegId.HMAC_SHA1_96, key(0, 16), key(0, 20)),  # short key
            (EncrId.AES_CBC, None, IntegId.HMAC_SHA1_96, key(0, 16), key(0, 20)),  # no length
            (EncrId.AES_GCM_16, 256, IntegId.HMAC_SHA1_96, key(0, 36), key(0, 20)),  # AEAD + MAC
            (EncrId.AES_GCM_16, 256, None, key(0, 32), b""),  # no salt
            (EncrId.AES_CBC, 128, IntegId.HMAC_SHA1_96, key(0, 16), key(0, 16)),  # short MAC key
            (EncrId.AES_CBC, 128, 99, key(0, 16), b""),
            (99, None, None, b"", b""),
        ]
        for case in bad:
            with self.assertRaises(xfrm.UnsupportedAlgorithm):
                xfrm.esp_algorithms(*case)

    def test_agrees_with_ike_keymat(self):
        """Every ESP cipher and integrity algorithm IKE can negotiate (transforms.ESP) has a
        kernel algorithm that takes exactly the KEYMAT IKE derives for it (RFC 7296 §2.17)."""
        for encr, bits in transforms.ESP.encryption:
            cipher = transforms.cipher_for(encr, bits)
            algorithms = xfrm.esp_algorithms(encr, bits, None, bytes(cipher.key_size), b"")
            kernel = algorithms.aead or algorithms.crypt
            self.assertEqual(len(kernel.key), cipher.key_size)
            if cipher.is_aead:
                self.assertEqual(algorithms.aead.icv_bits, cipher.icv_size * 8)
        for integ in transforms.ESP.integrity:
            mac = transforms.integrity_for(integ)
            _, key_bits, trunc = xfrm.INTEGRITY[integ]
            self.assertEqual((key_bits, trunc), (mac.key_size * 8, mac.icv_size * 8))


_GCM = "rfc4106(gcm(aes))"


class InstallerMessageTests(unittest.TestCase):
    """The SAs and policies the installer derives from a ChildSaSpec (no kernel)."""

    def test_child_sas(self):
        inbound, outbound = child_sas(SPEC)
        self.assertEqual((inbound.info.daddr, inbound.info.saddr), (LOCAL, REMOTE))
        self.assertEqual(inbound.info.spi, SPEC.inbound_spi)
        self.assertEqual(outbound.info.spi, SPEC.outbound_spi)
        self.assertEqual(inbound.encap, xfrm.Encap(31337, 4500))  # from the peer's port
        self.assertEqual(outbound.encap, xfrm.Encap(4500, 31337))
        self.assertEqual(inbound.crypt.key, SPEC.inbound_encr_key)
        self.assertEqual(outbound.auth.key, SPEC.outbound_integ_key)
        self.assertEqual(inbound.info.flags, xfrm.SaFlag.ESN | xfrm.SaFlag.AF_UNSPEC)
        self.assertEqual(inbound.replay_esn, xfrm.ReplayEsn(32))
        self.assertEqual(inbound.info.lifetime.soft_add_expires, 3240)
        self.assertEqual(inbound.info.lifetime.hard_bytes, xfrm.XFRM_INF)

    def test_child_sas_plain(self):
        spec = replace(SPEC, esn=False, encapsulation=None)
        inbound, _ = child_sas(spec, mark=xfrm.Mark(3), if_id=4)
        self.assertEqual((inbound.info.replay_window, inbound.replay_esn), (32, None))
        self.assertEqual((inbound.encap, inbound.mark, inbound.if_id), (None, xfrm.Mark(3), 4))
        big, _ = child_sas(spec, replay_window=1024)  # beyond the legacy 32-bit bitmap
        self.assertEqual((big.info.replay_window, big.replay_esn), (0, xfrm.ReplayEsn(1024)))
        self.assertFalse(big.info.flags & xfrm.SaFlag.ESN)

    def test_child_policies(self):
        policies = child_policies(SPEC)
        self.assertEqual([p.info.dir for p in policies], [xfrm.Dir.IN, xfrm.Dir.FWD, xfrm.Dir.OUT])
        inbound, fwd, out = policies
        self.assertEqual(inbound.info.selector, fwd.info.selector)
        self.assertEqual(inbound.info.selector.saddr, N("198.51.100.7/32"))
        self.assertEqual(out.info.selector.daddr, N("198.51.100.7/32"))
        self.assertEqual(inbound.templates, (xfrm.Template(LOCAL, REMOTE, 7),))
        self.assertEqual(out.templates, (xfrm.Template(REMOTE, LOCAL, 7),))

    def test_selector_pairs_ports_and_protocols(self):
        spec = replace(
            SPEC,
            local_selectors=(
                Selector(N("203.0.113.0/24")),
                Selector(N("192.0.2.53/32"), 17, 53, 53),
                Selector(N("2001:db8::/32")),  # no IPv6 peer selector: no policy
            ),
            remote_selectors=(Selector(N("198.51.100.7/32"), 6, 1024, 2047),),
        )
        policies = child_policies(spec)
        self.assertEqual(len(policies), 3)  # UDP/53 and TCP cannot meet
        out = policies[2].info.selector
        self.assertEqual((out.proto, out.sport, out.sport_mask), (6, 0, 0))
        self.assertEqual((out.dport, out.dport_mask), (1024, 0xFC00))
        inbound = policies[0].info.selector
        self.assertEqual((inbound.sport, inbound.sport_mask), (1024, 0xFC00))

    def test_icmp(self):
        spec = replace(
            SPEC,
            local_selectors=(Selector(N("203.0.113.0/24"), 1, 0x0800, 0x0800),),  # echo request
        )
        out = child_policies(spec)[2].info.selector
        self.assertEqual(
            (out.proto, out.sport, out.sport_mask, out.dport, out.dport_mask),
            (1, 8, 0xFFFF, 0, 0xFFFF),
        )
        odd = replace(SPEC, local_selectors=(Selector(N("203.0.113.0/24"), 1, 0x0800, 0x0900),))
        with self.assertRaises(InstallError):
            child_policies(odd)

    def test_port_masks(self):
        self.assertEqual(port_masks(0, 65535), [(0, 0)])
        self.assertEqual(port_masks(53, 53), [(53, 0xFFFF)])
        self.assertEqual(port_masks(1024, 2047), [(1024, 0xFC00)])
        self.assertEqual(port_masks(5, 9), [(5, 0xFFFF), (6, 0xFFFE), (8, 0xFFFE)])
        for start, end in [(1, 65535), (0, 65534), (1000, 1003), (4500, 4999), (65535, 65535)]:
            covered = {
                p for port, mask in port_masks(start, end) for p in range(65536) if p & mask == port
            }
            self.assertEqual(covered, set(range(start, end + 1)))

    def test_priority(self):
        host = xfrm.Selector.between(N("192.0.2.1/32"), N("198.51.100.7/32"))
        net = xfrm.Selector.between(N("192.0.2.0/24"), N("198.51.100.7/32"))
        udp = xfrm.Selector.between(N("192.0.2.0/24"), N("198.51.100.7/32"), 17)
        dns = xfrm.Selector.between(N("192.0.2.0/24"), N("198.51.100.7/32"), 17, (53, 0xFFFF))
        self.assertLess(priority(host), priority(net))
        self.assertLess(priority(udp), priority(net))
        self.assertLess(priority(dns), priority(udp))


# --- the host kernel, in a private network namespace -----------------------------------------

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def private_netns(case: unittest.TestCase) -> None:
    """Move this thread, which runs the reactor, into a new network namespace until the
    test's cleanups run."""
    if os.geteuid() != 0:
        raise unittest.SkipTest("needs root for a network namespace")
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    if _libc.unshare(CLONE_NEWNET) != 0:
        os.close(original)
        raise unittest.SkipTest(f"unshare(CLONE_NEWNET): {os.strerror(ctypes.get_errno())}")

    def restore() -> None:
        if _libc.setns(original, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns back to the original network namespace")
        os.close(original)

    case.addCleanup(restore)
    ip("link", "set", "lo", "up")


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


def sysctl(name: str, value: str) -> None:
    with open("/proc/sys/" + name.replace(".", "/"), "w") as f:  # this thread's namespace
        f.write(value)


def ip_policy_add(policy: xfrm.Policy) -> list[str]:
    """The iproute2 command for one of our policies (single ports only)."""
    sel, [tmpl] = policy.info.selector, policy.templates
    args = ["xfrm", "policy", "add", "src", str(sel.saddr), "dst", str(sel.daddr)]
    if sel.proto:
        args += ["proto", str(sel.proto)]
    if sel.sport_mask:
        args += ["sport", str(sel.sport)]
    if sel.dport_mask:
        args += ["dport", str(sel.dport)]
    args += ["dir", xfrm.Dir(policy.info.dir).name.lower(), "priority", str(policy.info.priority)]
    args += ["tmpl", "src", str(tmpl.saddr), "dst", str(tmpl.daddr), "proto", "esp"]
    return [*args, "reqid", str(tmpl.reqid), "mode", "tunnel"]


def ip_sa_add(sa: xfrm.Sa) -> list[str]:
    """The iproute2 command for one of our CBC/HMAC SAs."""
    info = sa.info
    args = ["xfrm", "state", "add", "src", str(info.saddr), "dst", str(info.daddr)]
    args += ["proto", "esp", "spi", f"0x{info.spi:08x}", "reqid", str(info.reqid)]
    args += ["mode", "tunnel", "flag", "af-unspec"]
    if info.flags & xfrm.SaFlag.ESN:
        args += ["esn"]
    window = sa.replay_esn.replay_window if sa.replay_esn else info.replay_window
    args += ["replay-window", str(window), "enc", sa.crypt.name, "0x" + sa.crypt.key.hex()]
    args += ["auth-trunc", sa.auth.name, "0x" + sa.auth.key.hex(), str(sa.auth.trunc_bits)]
    if sa.encap:
        args += ["encap", "espinudp", str(sa.encap.sport), str(sa.encap.dport), "0.0.0.0"]
    lft = info.lifetime
    return [
        *args,
        "limit",
        "time-soft",
        str(lft.soft_add_expires),
        "limit",
        "time-hard",
        str(lft.hard_add_expires),
    ]


KERNEL_SPEC = replace(
    SPEC,
    local_selectors=(Selector(N("203.0.113.0/24")), Selector(N("192.0.2.53/32"), 17, 53, 53)),
    remote_selectors=(Selector(N("198.51.100.7/32")),),
)


class KernelTests(unittest.TestCase):
    """Real NETLINK_XFRM answers from the host kernel, each test in a fresh namespace."""

    def setUp(self):
        private_netns(self)
        self.netlink = NetlinkSocket(reactor)
        self.addCleanup(self.netlink.close)

    def installer(self, **kwargs) -> KernelInstaller:
        installer = KernelInstaller(reactor, **kwargs)
        self.addCleanup(installer.close)
        return installer

    async def dump_policies(self) -> list[xfrm.Policy]:
        policies = [xfrm.decode(m) for m in await self.netlink.request(xfrm.dump_policy())]
        return [p for p in policies if isinstance(p, xfrm.Policy)]

    async def test_policies_back_from_the_kernel_and_iproute2(self):
        """NEWPOLICY in/fwd/out for each selector pair; GETPOLICY and a dump give them back
        as sent; `ip xfrm policy` lists them exactly as the policies iproute2 adds for the
        same parameters; removal leaves nothing."""
        installer = self.installer()
        expected = child_policies(KERNEL_SPEC)
        self.assertEqual(len(expected), 6)
        await installer.add_policies(KERNEL_SPEC)

        def comparable(p: xfrm.Policy) -> xfrm.Policy:
            return replace(p, info=replace(p.info, index=0, current=xfrm.LifetimeCurrent()))

        dumped = await self.dump_policies()
        self.assertEqual(len(dumped), len(expected))
        self.assertEqual({comparable(p) for p in dumped}, set(expected))
        for policy in expected:
            pid = xfrm.PolicyId(policy.info.selector, policy.info.dir)
            [answer] = await self.netlink.request(xfrm.get_policy(pid))
            self.assertEqual(comparable(xfrm.decode(answer)), policy)
        ours = ip("xfrm", "policy")
        self.assertIn("proto udp dport 53", ours)
        self.assertIn("proto esp reqid 7 mode tunnel", ours)

        await installer.remove_policies(KERNEL_SPEC)
        self.assertEqual(await self.dump_policies(), [])
        self.assertEqual(ip("xfrm", "policy"), "")
        for policy in expected:
            ip(*ip_policy_add(policy))
        self.assertEqual(ip("xfrm", "policy"), ours)
        ip("xfrm", "policy", "flush")

        pid = xfrm.PolicyId(expected[0].info.selector, xfrm.Dir.IN)
        with self.assertRaises(NetlinkError) as caught:
            await self.netlink.request(xfrm.get_policy(pid))
        self.assertEqual(caught.exception.errno, errno.ENOENT)

    async def test_rekey_keeps_shared_policies(self):
        """A second CHILD_SA with the same selectors takes the policies over; removing either
        leaves the other's in place."""
        installer = self.installer()
        rekeyed = replace(SPEC, reqid=8, inbound_spi=0xC1000003, outbound_spi=0xC2000004)

        async def reqids() -> set[int]:
            return {t.reqid for p in await self.dump_policies() for t in p.templates}

        await installer.add_policies(SPEC)
        await installer.add_policies(rekeyed)
        self.assertEqual(await reqids(), {8})
        await installer.remove_policies(SPEC)
        self.assertEqual(await reqids(), {8})
        await installer.remove_policies(rekeyed)
        self.assertEqual(await reqids(), set())

        await installer.add_policies(SPEC)
        await installer.add_policies(rekeyed)
        await installer.remove_policies(rekeyed)  # the newer goes first: back to the older
        self.assertEqual(await reqids(), {7})
        await installer.remove_policies(SPEC)
        self.assertEqual(len(await self.dump_policies()), 0)

    async def test_install_agrees_with_iproute2(self):
        """Where iproute2 cannot add an ESP SA (this host: EPROTONOSUPPORT, "Requested type
        not found"), install() fails with the same errno and message and leaves nothing
        behind; where it can (the VM), `ip xfrm state` and `ip xfrm policy` list the
        installer's SAs and policies exactly as iproute2's."""
        installer = self.installer()
        inbound, outbound = child_sas(KERNEL_SPEC)
        added = subprocess.run(["ip", *ip_sa_add(inbound)], capture_output=True, text=True)
        if added.returncode == 0:
            ip(*ip_sa_add(outbound))
            for policy in child_policies(KERNEL_SPEC):
                ip(*ip_policy_add(policy))
            theirs = ip("xfrm", "state"), ip("xfrm", "policy")
            ip("xfrm", "state", "flush")
            ip("xfrm", "policy", "flush")
            await installer.install(KERNEL_SPEC)
            self.assertEqual((ip("xfrm", "state"), ip("xfrm", "policy")), theirs)
            await installer.remove(KERNEL_SPEC)
        else:
            self.assertIn("Requested type not found", added.stderr)
            with self.assertRaises(InstallError) as caught:
                await installer.install(KERNEL_SPEC)
            error = caught.exception
            self.assertEqual(error.errno, errno.EPROTONOSUPPORT)
            self.assertEqual(
                str(error),
                "CHILD_SA reqid 7: inbound SA c1000001: XFRM_MSG_NEWSA: Protocol not supported"
                " (EPROTONOSUPPORT): Requested type not found"
                " (no ESP in this kernel: CONFIG_INET_ESP / module esp4)",
            )
        self.assertEqual(ip("xfrm", "state"), "")
        self.assertEqual(ip("xfrm", "policy"), "")
        await installer.remove(KERNEL_SPEC)  # idempotent

    async def test_refused_before_the_kernel(self):
        """Algorithms or selectors the kernel cannot take fail install() before any SA."""
        installer = self.installer()
        for spec in (
            replace(SPEC, encr_id=EncrId.AES_GCM_16, integ_id=None),  # 32-octet key: no salt
            replace(SPEC, local_selectors=(Selector(N("2001:db8::/32")),)),
        ):
            with self.assertRaises(InstallError) as caught:
                await installer.install(spec)
            self.assertTrue(str(caught.exception).startswith("CHILD_SA reqid 7: "))
        self.assertEqual(ip("xfrm", "state"), "")
        self.assertEqual(ip("xfrm", "policy"), "")

    async def test_probe(self):
        """probe() says what iproute2 finds, and removes its SAs."""
        added = subprocess.run(
            [
                "ip",
                "xfrm",
                "state",
                "add",
                "src",
                "192.0.2.1",
                "dst",
                "192.0.2.2",
                "proto",
                "esp",
                "spi",
                "0x1000",
                "enc",
                "cbc(aes)",
                "0x" + bytes(16).hex(),
                "auth-trunc",
                "hmac(sha256)",
                "0x" + bytes(32).hex(),
                "128",
            ],
            capture_output=True,
            text=True,
        )
        ip("xfrm", "state", "flush")
        support = await KernelInstaller.probe(reactor)
        self.assertEqual(support.esp, added.returncode == 0)
        if not support.esp:
            self.assertIn("EPROTONOSUPPORT", support.reason)
        self.assertEqual(ip("xfrm", "state"), "")

    async def test_allocspi_counters_and_flush_by_reqid(self):
        """ALLOCSPI's larval SAs need no ESP: GETSA on them gives lifetime current and stats,
        and flush(reqid) deletes exactly that reqid's SAs and policies."""
        installer = self.installer()
        spis = []
        for saddr, daddr in ((REMOTE, LOCAL), (LOCAL, REMOTE)):
            [answer] = await self.netlink.request(xfrm.alloc_spi(saddr, daddr, reqid=42))
            sa = xfrm.decode(answer)
            self.assertEqual((sa.info.reqid, sa.info.daddr, sa.info.saddr), (42, daddr, saddr))
            self.assertGreaterEqual(sa.info.spi, 0x100)
            spis.append(sa.info.spi)
        spec = replace(SPEC, reqid=42, inbound_spi=spis[0], outbound_spi=spis[1])
        counters = await installer.counters(spec)
        for sa in (counters.inbound, counters.outbound):
            self.assertEqual((sa.bytes, sa.packets, sa.replay, sa.integrity_failed), (0, 0, 0, 0))
            self.assertLess(abs(sa.add_time - time.time()), 60)
        self.assertIn(f"spi 0x{spis[0]:08x} reqid 42", ip("xfrm", "state"))

        other = xfrm.Policy(
            xfrm.PolicyInfo(xfrm.Selector.between(N("203.0.113.0/24"), N("198.51.100.9/32")), 1),
            (xfrm.Template(REMOTE, LOCAL, 43),),
        )
        await self.netlink.request(xfrm.new_policy(other))
        await installer.add_policies(spec)
        self.assertEqual(await installer.flush(reqid=42), 2 + 3)
        self.assertEqual(await self.netlink.request(xfrm.dump_sa()), [])
        [left] = await self.dump_policies()
        self.assertEqual(left.templates[0].reqid, 43)
        self.assertEqual(await installer.flush(reqid=range(40, 43)), 0)
        self.assertEqual(await installer.flush(reqid=range(43, 50)), 1)
        with self.assertRaises(ValueError):
            installer.flush()

    async def test_expire_event(self):
        """A larval SA expires after net.core.xfrm_acq_expires: the kernel deletes it and
        multicasts XFRM_MSG_EXPIRE (hard) to XFRMNLGRP_EXPIRE; the installer maps it to
        the CHILD_SA it belongs to."""
        sysctl("net.core.xfrm_acq_expires", "1")
        events: list[ExpireEvent] = []
        arrived: defer.Deferred[None] = defer.Deferred()
        installer = self.installer(expired=lambda e: (events.append(e), arrived.callback(None)))
        [answer] = await self.netlink.request(xfrm.alloc_spi(REMOTE, LOCAL, reqid=5))
        spi = xfrm.decode(answer).info.spi
        spec = replace(SPEC, reqid=5, inbound_spi=spi)
        installer.installed[spi] = spec  # as if install() had filled it in
        await arrived.addTimeout(15, reactor)
        self.assertEqual(events, [ExpireEvent(spec, inbound=True, hard=True)])
        self.assertEqual(installer.installed, {})
        self.assertEqual(ip("xfrm", "state"), "")

    async def test_acquire_event(self):
        """Traffic matching an out policy with no SA makes the kernel multicast
        XFRM_MSG_ACQUIRE to XFRMNLGRP_ACQUIRE (lo must not skip XFRM for that)."""
        sysctl("net.ipv4.conf.lo.disable_xfrm", "0")
        ip("addr", "add", "192.0.2.1/24", "dev", "lo")
        arrived: defer.Deferred[NetlinkMessage] = defer.Deferred()
        events = NetlinkSocket(reactor, [xfrm.Group.ACQUIRE], arrived.callback)
        self.addCleanup(events.close)
        sel = xfrm.Selector.between(N("192.0.2.1/32"), N("192.0.2.2/32"))
        tmpl = xfrm.Template(A("192.0.2.2"), LOCAL, 9)
        policy = xfrm.Policy(xfrm.PolicyInfo(sel, xfrm.Dir.OUT), (tmpl,))
        await self.netlink.request(xfrm.new_policy(policy))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("192.0.2.1", 0))
            udp.sendto(b"x", ("192.0.2.2", 9))
        acquire = xfrm.decode(await arrived.addTimeout(10, reactor))
        assert isinstance(acquire, xfrm.Acquire)
        self.assertEqual((acquire.daddr, acquire.saddr, acquire.proto), (A("192.0.2.2"), LOCAL, 50))
        self.assertEqual((acquire.selector.proto, acquire.selector.dport), (17, 9))
        self.assertEqual(acquire.templates, (tmpl,))
        self.assertEqual(acquire.policy.dir, xfrm.Dir.OUT)

    async def test_multipart_dump(self):
        """A dump larger than one datagram (about 100 KB of policies) arrives whole."""
        for port in range(1, 401):
            sel = xfrm.Selector.between(
                N("203.0.113.0/24"), N("198.51.100.7/32"), 17, dport=(port, 0xFFFF)
            )
            policy = xfrm.Policy(
                xfrm.PolicyInfo(sel, xfrm.Dir.OUT), (xfrm.Template(REMOTE, LOCAL, 1),)
            )
            await self.netlink.request(xfrm.new_policy(policy))
        policies = await self.dump_policies()
        self.assertEqual(sorted(p.info.selector.dport for p in policies), list(range(1, 401)))
        await self.netlink.request(xfrm.flush_policy())
        self.assertEqual(await self.dump_policies(), [])

    async def test_errors(self):
        """The kernel's errno, and its extended ACK message where it gives one."""
        sel = xfrm.Selector.between(N("198.51.100.7/32"), N("203.0.113.0/24"))
        with self.assertRaises(NetlinkError) as caught:
            await self.netlink.request(xfrm.new_policy(xfrm.Policy(xfrm.PolicyInfo(sel, 7))))
        self.assertEqual(caught.exception.errno, errno.EINVAL)
        self.assertIn(caught.exception.extack, ("", "Invalid policy direction"))
        with self.assertRaises(NetlinkError) as caught:
            await self.netlink.request(xfrm.del_sa(xfrm.SaId(REMOTE, 0x999)))
        self.assertEqual(caught.exception.errno, errno.ESRCH)
        self.netlink.close()
        with self.assertRaises(ConnectionDone):
            await self.netlink.request(xfrm.dump_sa())

    async def test_ike_socket_setup(self):
        """Per-socket bypass policies appear as "socket in/out" while the socket lives;
        port 4500 decapsulates ESP in UDP."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 4500))
            bypass_ipsec(udp)
            espinudp(udp)
            self.assertEqual(udp.getsockopt(socket.IPPROTO_UDP, UDP_ENCAP), 2)
            policies = await self.dump_policies()
            self.assertEqual(sorted(p.info.dir for p in policies), [3, 4])  # XFRM_POLICY_MAX + dir
            self.assertEqual({p.info.action for p in policies}, {xfrm.Action.ALLOW})
            listing = ip("xfrm", "policy")
            self.assertIn("socket in priority 0", listing)
            self.assertIn("socket out priority 0", listing)
            with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as udp6:
                bypass_ipsec(udp6)
                self.assertIn("src ::/0 dst ::/0", ip("xfrm", "policy"))
        self.assertEqual(await self.dump_policies(), [])


# --- the responder of a CHILD_SA rekey: the outbound SA later (RFC 7296 §1.3.3, §2.8) ----------

OLD = replace(SPEC, esn=False, soft_lifetime=0, hard_lifetime=0)
NEW = replace(
    OLD,
    inbound_spi=0xC1000003,
    outbound_spi=0xC2000004,
    inbound_encr_key=key(0x10),
    inbound_integ_key=key(0x30),
    outbound_encr_key=key(0x50),
    outbound_integ_key=key(0x70),
)  # the same reqid and selectors, as vpnaaa's rekeys keep them
ZERO = SaCounters(0, 0, 0, 0, 0, 0, 0)


def inbound_sa(spec: ChildSaSpec) -> tuple[str, int]:
    return (spec.local_address, spec.inbound_spi)


def outbound_sa(spec: ChildSaSpec) -> tuple[str, int]:
    return (spec.remote_address, spec.outbound_spi)


async def policies(netlink: NetlinkSocket) -> list[tuple[str, int]]:
    """(direction, reqid) of each policy in the kernel."""
    dumped = [xfrm.decode(m) for m in await netlink.request(xfrm.dump_policy())]
    return sorted(
        (xfrm.Dir(p.info.dir).name.lower(), p.templates[0].reqid)
        for p in dumped
        if isinstance(p, xfrm.Policy)
    )


class StandInSad:
    """The SA database of a kernel with ESP, for this host whose kernel refuses ESP SAs:
    NEWSA, DELSA and GETSA are answered from a dict as the kernel answers them (EEXIST,
    ESRCH; the change made before the answer, as the kernel makes it inside sendmsg), and
    NEWSA answers can be held back to order a race. Every other request (the policies)
    goes to the real kernel. :class:`RekeyResponderEspTests` runs the same phases on a
    real SAD with traffic, where the kernel has ESP (the VM)."""

    def __init__(self, kernel: NetlinkSocket) -> None:
        self.kernel = kernel
        self.sas: dict[tuple[str, int], xfrm.Sa] = {}
        self.sent: list[tuple[str, int]] = []  # (request, SPI) of the SA requests
        self.held: list[defer.Deferred[list[NetlinkMessage]]] | None = None

    def request(self, request: xfrm.Request) -> defer.Deferred[list[NetlinkMessage]]:
        if request.type == xfrm.MsgType.NEWSA:
            sa = xfrm.Sa.decode(request.body)
            key = (str(sa.info.daddr), sa.info.spi)
            self.sent.append(("NEWSA", sa.info.spi))
            if key in self.sas:
                return defer.fail(NetlinkError(errno.EEXIST, "XFRM_MSG_NEWSA"))
            self.sas[key] = sa
            if self.held is None:
                return defer.succeed([])
            answer: defer.Deferred[list[NetlinkMessage]] = defer.Deferred()
            self.held.append(answer)
            return answer
        if request.type in (xfrm.MsgType.DELSA, xfrm.MsgType.GETSA):
            id = xfrm.SaId.decode(request.body)
            key = (str(id.daddr), id.spi)
            name = xfrm.MsgType(request.type).name
            self.sent.append((name, id.spi))
            if key not in self.sas:
                return defer.fail(NetlinkError(errno.ESRCH, f"XFRM_MSG_{name}"))
            if request.type == xfrm.MsgType.DELSA:
                del self.sas[key]
                return defer.succeed([])
            return defer.succeed(
                [NetlinkMessage(xfrm.MsgType.NEWSA, 0, 0, 0, self.sas[key].encode())]
            )
        return self.kernel.request(request)

    def close(self) -> None:
        self.kernel.close()

    def release(self) -> None:
        held, self.held = self.held or [], None
        for answer in held:
            answer.callback([])


class RekeyResponderTests(unittest.TestCase):
    """install(spec, outbound=False), install_outbound(spec) and remove(spec) in every order
    the IKE layer can call them: the SAs in a stand-in SAD, the policies in the host
    kernel (a private namespace)."""

    def setUp(self):
        private_netns(self)
        self.installer = KernelInstaller(reactor)
        self.addCleanup(self.installer.close)
        self.sad = StandInSad(self.installer.netlink)
        self.installer.netlink = self.sad  # type: ignore[assignment]

    async def policies(self) -> list[tuple[str, int]]:
        return await policies(self.sad.kernel)

    async def test_phases(self):
        """Phase one adds the new inbound SA only, and the policies (the same as the old
        CHILD_SA's); counters() reads the inbound SA and gives zeros for the outbound one.
        Phase two adds the outbound SA, once however often it is asked; the old CHILD_SA
        then goes and the new one keeps the policies."""
        await self.installer.install(OLD)
        await self.installer.install(NEW, outbound=False)
        self.assertEqual(set(self.sad.sas), {inbound_sa(OLD), outbound_sa(OLD), inbound_sa(NEW)})
        self.assertEqual(await self.policies(), [("fwd", 7), ("in", 7), ("out", 7)])
        counters = await self.installer.counters(NEW)
        self.assertEqual(counters.outbound, ZERO)
        self.assertNotIn(("GETSA", NEW.outbound_spi), self.sad.sent)

        await self.installer.install_outbound(NEW)
        await self.installer.install_outbound(NEW)
        self.assertEqual(self.sad.sent.count(("NEWSA", NEW.outbound_spi)), 1)
        self.assertEqual(len(self.sad.sas), 4)
        added = self.sad.sas[outbound_sa(NEW)]
        self.assertEqual(added, child_sas(NEW)[1])
        await self.installer.counters(NEW)
        self.assertIn(("GETSA", NEW.outbound_spi), self.sad.sent)

        await self.installer.remove(OLD)
        self.assertEqual(set(self.sad.sas), {inbound_sa(NEW), outbound_sa(NEW)})
        self.assertEqual(await self.policies(), [("fwd", 7), ("in", 7), ("out", 7)])
        await self.installer.remove(NEW)
        await self.installer.remove(NEW)  # idempotent
        self.assertEqual((self.sad.sas, await self.policies()), ({}, []))

    async def test_removed_in_phase_one(self):
        """The new CHILD_SA removed before its outbound SA went in (the IKE_SA ends):
        the old one keeps its SAs and policies; no DELSA is sent for an outbound SA never
        added; install_outbound() then fails; removing the old leaves nothing."""
        await self.installer.install(OLD)
        await self.installer.install(NEW, outbound=False)
        await self.installer.remove(NEW)
        self.assertNotIn(("DELSA", NEW.outbound_spi), self.sad.sent)
        self.assertEqual(set(self.sad.sas), {inbound_sa(OLD), outbound_sa(OLD)})
        self.assertEqual(await self.policies(), [("fwd", 7), ("in", 7), ("out", 7)])
        with self.assertRaises(InstallError) as caught:
            await self.installer.install_outbound(NEW)
        self.assertEqual(
            str(caught.exception),
            "CHILD_SA reqid 7: outbound SA c2000004: inbound SA c1000003 is not installed",
        )
        await self.installer.remove(OLD)
        self.assertEqual((self.sad.sas, await self.policies()), ({}, []))

    async def test_first_child_sa_in_two_phases(self):
        """Without an older CHILD_SA the out policy is there from phase one (its template
        finds no SA: the kernel holds such traffic back, it never leaves in clear)."""
        await self.installer.install(OLD, outbound=False)
        self.assertEqual(set(self.sad.sas), {inbound_sa(OLD)})
        self.assertEqual(await self.policies(), [("fwd", 7), ("in", 7), ("out", 7)])
        await self.installer.remove(OLD)
        self.assertEqual((self.sad.sas, await self.policies()), ({}, []))

    async def test_outbound_refused(self):
        """The kernel refuses the outbound SA (an SA with the same destination and SPI, of
        another CHILD_SA, is there): install_outbound() fails with the kernel's reason, the
        CHILD_SA stays inbound-only and remove() leaves the other SA alone."""
        other = replace(NEW, reqid=9, inbound_spi=0xC1000009)
        await self.installer.install(other)
        await self.installer.install(OLD)
        await self.installer.install(NEW, outbound=False)
        with self.assertRaises(InstallError) as caught:
            await self.installer.install_outbound(NEW)
        self.assertEqual(caught.exception.errno, errno.EEXIST)
        self.assertTrue(str(caught.exception).startswith("CHILD_SA reqid 7: outbound SA c2000004"))
        self.assertEqual((await self.installer.counters(NEW)).outbound, ZERO)
        await self.installer.remove(NEW)
        await self.installer.remove(OLD)
        self.assertEqual(set(self.sad.sas), {inbound_sa(other), outbound_sa(other)})

    async def test_removed_while_outbound_goes_in(self):
        """remove() while the kernel's answer to the outbound SA is still on its way: the
        SA is taken out again and install_outbound() fails."""
        await self.installer.install(NEW, outbound=False)
        self.sad.held = []
        adding = self.installer.install_outbound(NEW)
        again = self.installer.install_outbound(NEW)  # waits for the first
        self.assertEqual(self.sad.sent.count(("NEWSA", NEW.outbound_spi)), 1)
        await self.installer.remove(NEW)
        self.assertEqual(set(self.sad.sas), {outbound_sa(NEW)})  # added, not yet answered
        self.sad.release()
        with self.assertRaises(InstallError) as caught:
            await adding
        self.assertEqual(
            str(caught.exception),
            "CHILD_SA reqid 7: removed while its outbound SA was added",
        )
        with self.assertRaises(InstallError):
            await again  # not installed any more
        self.assertEqual((self.sad.sas, await self.policies()), ({}, []))

    async def test_expire_of_an_outbound_sa_not_installed(self):
        """An expiry for the destination and SPI of an outbound SA not installed yet is
        another CHILD_SA's, not this one's; the old CHILD_SA's own still arrives (larval
        SAs from ALLOCSPI expire after net.core.xfrm_acq_expires, in the real kernel)."""
        sysctl("net.core.xfrm_acq_expires", "1")
        events: list[ExpireEvent] = []
        arrived: defer.Deferred[None] = defer.Deferred()

        def expired(event: ExpireEvent) -> None:
            events.append(event)
            if event.spec == OLD:
                arrived.callback(None)

        self.installer.expired = expired
        await self.installer.install(OLD)
        await self.installer.install(NEW, outbound=False)
        for spec in (NEW, OLD):  # the first to expire is NEW's
            spi = spec.outbound_spi
            request = xfrm.alloc_spi(LOCAL, REMOTE, spec.reqid, spi_min=spi, spi_max=spi)
            await self.sad.kernel.request(request)
            await deferLater(reactor, 0.2, lambda: None)
        await arrived.addTimeout(15, reactor)
        self.assertEqual(events, [ExpireEvent(OLD, inbound=False, hard=True)])
        await self.installer.remove(NEW)


class NullInstallerTests(unittest.TestCase):
    def test_outbound_later(self):
        """The null installer records which CHILD_SAs have their outbound SA in."""
        installer = NullInstaller()
        installer.install(OLD)
        installer.install(NEW, outbound=False)
        self.assertEqual(
            (set(installer.installed), installer.outbound),
            ({OLD.inbound_spi, NEW.inbound_spi}, {OLD.inbound_spi}),
        )
        installer.install_outbound(NEW)
        installer.install_outbound(NEW)
        installer.remove(OLD)
        self.assertEqual(
            (set(installer.installed), installer.outbound), ({NEW.inbound_spi}, {NEW.inbound_spi})
        )
        installer.remove(NEW)
        self.failureResultOf(installer.install_outbound(NEW), InstallError)
        self.assertEqual((installer.installed, installer.outbound), ({}, set()))


def esp_or_skip() -> None:
    """Skip unless this kernel (this namespace) takes an ESP SA: the host here does not, the
    VM does (``scripts/kernel-vm --run '.venv/bin/trial tests.test_kernel_xfrm'``)."""
    inbound, _ = child_sas(OLD)
    added = subprocess.run(["ip", *ip_sa_add(inbound)], capture_output=True, text=True)
    if added.returncode != 0:
        raise unittest.SkipTest(f"no ESP in this kernel: {added.stderr.strip()}")
    ip("xfrm", "state", "flush")


class RekeyResponderEspTests(unittest.TestCase):
    """The same phases in a kernel with ESP: the SAs really in its SAD, and UDP datagrams
    from 203.0.113.1 to 198.51.100.7 (both on lo) sent through the out policy, counted on
    whichever outbound SA the kernel picked. The outer packets go to 198.51.100.1:31337,
    where no socket decapsulates them: only the sending side counts them."""

    def setUp(self):
        private_netns(self)
        esp_or_skip()
        sysctl("net.ipv4.conf.lo.disable_xfrm", "0")
        for address in ("192.0.2.1/24", "198.51.100.1/24", "203.0.113.1/24"):
            ip("addr", "add", address, "dev", "lo")
        self.netlink = NetlinkSocket(reactor)
        self.addCleanup(self.netlink.close)
        self.installer = KernelInstaller(reactor)
        self.addCleanup(self.installer.close)

    async def sas(self) -> set[tuple[str, int]]:
        """(destination, SPI) of each SA in the kernel."""
        dumped = [xfrm.decode(m) for m in await self.netlink.request(xfrm.dump_sa())]
        return {(str(sa.info.daddr), sa.info.spi) for sa in dumped if isinstance(sa, xfrm.Sa)}

    def send(self, count: int) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("203.0.113.1", 0))
            for _ in range(count):
                udp.sendto(b"x", ("198.51.100.7", 9))

    async def sent(self, spec: ChildSaSpec) -> int:
        return (await self.installer.counters(spec)).outbound.packets

    async def test_new_outbound_sa_carries_traffic_once_the_old_goes(self):
        """Phase one: the new inbound SA only, traffic on the old outbound SA. Phase two:
        both outbound SAs, then the old CHILD_SA removed: traffic on the new outbound SA,
        the policies unchanged; then nothing left."""
        await self.installer.install(OLD)
        await self.installer.install(NEW, outbound=False)
        self.assertEqual(await self.sas(), {inbound_sa(OLD), outbound_sa(OLD), inbound_sa(NEW)})
        self.send(5)
        self.assertEqual(await self.sent(OLD), 5)
        self.assertEqual((await self.installer.counters(NEW)).outbound, ZERO)

        await self.installer.install_outbound(NEW)
        await self.installer.install_outbound(NEW)
        self.assertEqual(len(await self.sas()), 4)
        await self.installer.remove(OLD)
        self.assertEqual(await self.sas(), {inbound_sa(NEW), outbound_sa(NEW)})
        self.assertEqual(await policies(self.netlink), [("fwd", 7), ("in", 7), ("out", 7)])
        before = await self.sent(NEW)  # 0 unless the kernel already preferred the newer SA
        self.send(7)
        self.assertEqual(await self.sent(NEW), before + 7)

        await self.installer.remove(NEW)
        self.assertEqual((await self.sas(), await policies(self.netlink)), (set(), []))

    async def test_remove_in_either_phase(self):
        """remove() of a CHILD_SA in phase one or phase two, and of the old one, leaves no
        SA and no policy; the old CHILD_SA keeps carrying traffic when the new one goes in
        phase one."""
        await self.installer.install(OLD)
        await self.installer.install(NEW, outbound=False)
        await self.installer.remove(NEW)
        self.assertEqual(await self.sas(), {inbound_sa(OLD), outbound_sa(OLD)})
        self.send(3)
        self.assertEqual(await self.sent(OLD), 3)
        await self.installer.remove(OLD)
        self.assertEqual((await self.sas(), await policies(self.netlink)), (set(), []))

        await self.installer.install(OLD)
        await self.installer.install(NEW, outbound=False)
        await self.installer.install_outbound(NEW)
        await self.installer.remove(NEW)
        await self.installer.remove(OLD)
        self.assertEqual((await self.sas(), await policies(self.netlink)), (set(), []))

        await self.installer.install(NEW, outbound=False)
        await self.installer.remove(NEW)
        await self.installer.remove(NEW)
        self.assertEqual((await self.sas(), await policies(self.netlink)), (set(), []))

"""This host's addresses from rtnetlink (:mod:`vpnaaa.kernel.addresses`), checked against
iproute2's own reading (``ip -json address``), and, in a network namespace of the test's
own, kept current as addresses come and go — also where ``net.ipv4.ip_nonlocal_bind``
lets every address bind (what the DAE's NAS-IP-Address check must not be fooled by)."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import sys
from collections.abc import Generator
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from vpnaaa.kernel.addresses import IFA_LOCAL, IFADDRMSG, RTM_NEWADDR, HostAddresses
from vpnaaa.kernel.xfrm import NetlinkMessage, encode_attrs

IP = "/usr/sbin/ip"


def iproute2_addresses(
    netns: str | None = None,
) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    argv = [IP, "-json", "address", "show"]
    if netns is not None:
        argv[1:1] = ["-n", netns]
    links = json.loads(subprocess.run(argv, capture_output=True, check=True, text=True).stdout)
    return {ipaddress.ip_address(a["local"]) for link in links for a in link.get("addr_info", [])}


@defer.inlineCallbacks
def until(predicate: Any, within: float = 5.0) -> Generator[defer.Deferred[Any], Any, bool]:
    """Wait (on the reactor) until ``predicate()`` holds; whether it did in time."""
    for _ in range(int(within / 0.01)):
        if predicate():
            return True
        yield task.deferLater(reactor, 0.01, lambda: None)
    return bool(predicate())


class HostAddressesTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_the_dump_matches_iproute2(self) -> Generator[defer.Deferred[Any], Any, None]:
        """Every address iproute2 lists (loopback included: the DAE leaves those out
        itself), and no other."""
        host = HostAddresses(reactor)
        host.start()
        self.addCleanup(host.stop)
        self.assertTrue((yield until(lambda: host.known)))
        self.assertEqual(set(host.addresses), iproute2_addresses())

    @defer.inlineCallbacks
    def test_a_change_during_the_dump_dumps_again(
        self,
    ) -> Generator[defer.Deferred[Any], Any, None]:
        """A notification that arrives while the dump is under way may be older or newer
        than the dump's snapshot: the list is dumped again, and the kernel's word is
        final. (The kernel queues the dump's answer inside sendmsg; the notification is
        handed over before the reactor reads it.)"""
        host = HostAddresses(reactor)
        dumps: list[Any] = []
        host.start()
        self.addCleanup(host.stop)
        assert host._socket is not None and host._socket.events is not None
        request = host._socket.request
        host._socket.request = lambda r: dumps.append(r) or request(r)  # type: ignore[method-assign]
        body = IFADDRMSG.pack(socket.AF_INET, 32, 0, 0, 1)
        body += encode_attrs([(IFA_LOCAL, bytes([192, 0, 2, 251]))])
        host._socket.events(NetlinkMessage(RTM_NEWADDR, 0, 0, 0, body))  # none such exists
        self.assertIn(ipaddress.ip_address("192.0.2.251"), host)
        self.assertFalse(host.known)
        self.assertTrue((yield until(lambda: host.known and not host._dumping)))
        self.assertEqual(len(dumps), 1)  # the second (the first went out in start())
        self.assertEqual(set(host.addresses), iproute2_addresses())


# Run inside the namespace (the kernel answers for the namespace of the socket's maker):
# changes made there with ip(8), what HostAddresses saw after each, as JSON lines.
SCRIPT = r"""
import ipaddress, json, socket, subprocess, sys
from twisted.internet import defer, reactor, task
from vpnaaa.kernel.addresses import HostAddresses
from tests.test_kernel_addresses import until

def ip(*args):
    subprocess.run(["ip", *args], check=True)

def say(**fields):
    print(json.dumps(fields), flush=True)

@defer.inlineCallbacks
def main():
    host = HostAddresses(reactor)
    host.start()
    has = lambda a: ipaddress.ip_address(a) in host
    say(step="dumped", ok=(yield until(lambda: host.known)), lo_address=has("203.0.113.9"))
    ip("address", "add", "198.51.100.7/24", "dev", "v0")
    ip("address", "add", "2001:db8::9/64", "dev", "v0", "nodad")
    say(step="added", ok=(yield until(lambda: has("198.51.100.7") and has("2001:db8::9"))))
    ip("address", "add", "198.51.100.7/32", "dev", "lo")  # the same address twice
    ip("address", "del", "198.51.100.7/24", "dev", "v0")
    ip("address", "add", "192.0.2.200/32", "dev", "lo")  # a marker: the events before it are in
    yield until(lambda: has("192.0.2.200"))
    say(step="on one interface still", held=has("198.51.100.7"))
    ip("address", "del", "198.51.100.7/32", "dev", "lo")
    ip("address", "del", "2001:db8::9/64", "dev", "v0")
    gone = lambda: not has("198.51.100.7") and not has("2001:db8::9")
    say(step="deleted", ok=(yield until(gone)))
    subprocess.run(["sysctl", "-q", "-w", "net.ipv4.ip_nonlocal_bind=1"], check=True)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("192.0.2.77", 0))  # binds: a bind(2) probe would call it ours
    say(step="nonlocal bind", ours=has("192.0.2.77"))
    host.stop()
    reactor.stop()

reactor.callWhenRunning(main)
reactor.run()
"""


class NamespaceTests(unittest.TestCase):
    def setUp(self) -> None:
        if os.geteuid() != 0:
            raise unittest.SkipTest("a network namespace needs root")
        self.netns = f"vpnaaa-addr-{os.getpid()}"
        subprocess.run([IP, "netns", "add", self.netns], check=True)
        self.addCleanup(subprocess.run, [IP, "netns", "del", self.netns], check=False)
        for command in (
            "link set lo up",
            "address add 203.0.113.9/32 dev lo",
            "link add v0 type veth peer name v1",
            "link set v0 up",
            "link set v1 up",
        ):
            subprocess.run([IP, "-n", self.netns, *command.split()], check=True)

    def test_addresses_as_they_change(self):
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        out = subprocess.run(
            [IP, "netns", "exec", self.netns, sys.executable, "-c", SCRIPT],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=root,
            check=False,
        )
        self.assertEqual(out.returncode, 0, out.stderr)
        steps = [json.loads(line) for line in out.stdout.splitlines()]
        self.assertEqual(
            steps,
            [
                {"step": "dumped", "ok": True, "lo_address": True},
                {"step": "added", "ok": True},
                {"step": "on one interface still", "held": True},
                {"step": "deleted", "ok": True},
                {"step": "nonlocal bind", "ours": False},
            ],
        )

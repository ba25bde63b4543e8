"""Accounting of VPN sessions (RFC 2866/2869) received by real accounting servers.

strongSwan's charon connects through vpnaaa's IKEv2 responder (:mod:`tests.interop.charon`,
EAP-MSCHAPv2 with vpnaaa's own users); vpnaaa accounts the session as a NAS does (Start,
Interim-Update every ``acct_interim_interval``, Stop when charon deletes the IKE SA), between
an Accounting-On when it starts and an Accounting-Off when it stops, into its local
accounting log and to ``[accounting] servers``:

- a private FreeRADIUS 3 (:mod:`tests.interop.freeradius`) with an accounting listener added,
  whose stock ``detail`` module writes every Accounting-Request it accepted (so it checked
  the Request Authenticator, RFC 2866 §3) to ``radacct/127.0.0.1/detail-DATE``, the
  Accounting-On and -Off (RFC 2866 §5.1) with the gateway's NAS-Identifier among them;
- a second vpnaaa acting as the accounting server (its RADIUS server's accounting log), behind
  a first server that never answers: the records fail over to it, the later ones go to it
  directly; and stopping the gateway sends it the Stop (Admin-Reboot) before the socket closes.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

from twisted.internet import defer

from tests.interop import charon, freeradius
from tests.interop.test_ike_charon import CharonTestCase
from tests.support import add_users, log_lines, ports, radius_config, start_daemon, state_dir
from vpnaaa.radius import wire

SECRET = "accounting-interop-secret"
INTERVAL = 1  # acct_interim_interval, seconds


class AccountingFreeRadius(freeradius.FreeRadius):
    """The private FreeRADIUS plus an accounting listener on 127.0.0.1:``acct_port``."""

    acct_port = 0

    def _write_config(self, port: int) -> None:
        super()._write_config(port)
        self.acct_port = freeradius.free_udp_ports(1)[0]
        default = self.raddb / "sites-enabled" / "default"
        listen = f"listen {{\n\ttype = acct\n\tipaddr = {freeradius.LOOPBACK}\n"
        listen += f"\tport = {self.acct_port}\n}}\n"
        text = default.read_text().replace("server default {\n", "server default {\n" + listen, 1)
        default.write_text(text)

    def detail(self) -> list[dict[str, str]]:
        """The records of the detail module's files: attribute name to value (unquoted)."""
        records = []
        for path in sorted((self.raddb / "log" / "radacct").glob("*/detail-*")):
            for block in path.read_text().split("\n\n"):
                pairs = re.findall(r"^\t([\w-]+) = (.*)$", block, re.M)
                if pairs:
                    records.append({name: value.strip('"') for name, value in pairs})
        return records


def local_records(path: Path) -> list[dict[str, Any]]:
    """The records of a vpnaaa accounting log: attribute name to its first value."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [{k: v[0] for k, v in json.loads(line)["attributes"].items()} for line in lines]


def statuses(records: list[dict[str, Any]], session_id: str) -> list[str]:
    return [r["Acct-Status-Type"] for r in records if r.get("Acct-Session-Id") == session_id]


class AccountingCase(CharonTestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self) -> Generator[defer.Deferred[Any], Any, None]:
        yield super().setUp()
        self.lines: list[str] = log_lines(self)

    def start_accounting_gateway(self, servers: list[str], **options: object) -> None:
        extra = f"acct_interim_interval = {INTERVAL}\n[accounting]\n"
        extra += f"servers = {json.dumps(servers)}\nsecret = {json.dumps(SECRET)}\n"
        extra += "".join(f"{key} = {value}\n" for key, value in options.items())
        self.start_gateway(extra)

    @defer.inlineCallbacks
    def session(self) -> Generator[defer.Deferred[Any], Any, tuple[charon.Charon, Any]]:
        """charon connected; (charon, the gateway's IKE SA of the session)."""
        client, result = yield self.connect()
        if not result.ok:
            self.fail(result.output + client.tail())
        (sa,) = self.daemon.ike.responder.find(user="alice")
        return client, sa

    @defer.inlineCallbacks
    def until(self, condition: Any, within: float, what: str) -> Generator[Any, Any, None]:
        start = time.monotonic()
        while not condition():
            if time.monotonic() - start > within:
                self.fail(f"not within {within:g} s: {what}")
            yield charon.sleep(0.1)

    def assert_session_records(self, records: list[dict[str, Any]], sa: Any) -> None:
        """Start, Interim-Update(s), Stop of the session, each naming alice, her virtual IP
        and charon's address; the Stop says User-Request (charon deleted the IKE SA)."""
        mine = [r for r in records if r.get("Acct-Session-Id") == sa.session_id]
        kinds = [r["Acct-Status-Type"] for r in mine]
        self.assertEqual(kinds[0], "Start", kinds)
        self.assertEqual(kinds[-1], "Stop", kinds)
        self.assertIn("Interim-Update", kinds)
        self.assertEqual(set(kinds[1:-1]), {"Interim-Update"}, kinds)
        for record in mine:
            self.assertEqual(record["User-Name"], "alice")
            self.assertEqual(record["Framed-IP-Address"], self.virtual_ip)
            self.assertEqual(record["Calling-Station-Id"], self.netns.client_address)
            self.assertEqual(record["Called-Station-Id"], self.netns.gateway_address)
            self.assertEqual(record["NAS-Port-Type"], "Virtual")
        self.assertEqual(mine[-1]["Acct-Terminate-Cause"], "User-Request")
        self.assertGreaterEqual(int(mine[-1]["Acct-Session-Time"]), INTERVAL)


class FreeRadiusAccountingTests(AccountingCase):
    @defer.inlineCallbacks
    def test_freeradius_receives_start_interim_and_stop(self):
        reason = freeradius.unavailable()
        if reason:
            self.skipTest(reason)
        radius = AccountingFreeRadius(self.state / "freeradius", SECRET, {})
        self.addCleanup(radius.stop)
        yield radius.start()
        self.start_accounting_gateway([f"{freeradius.LOOPBACK}:{radius.acct_port}"])
        client, sa = yield self.session()
        self.virtual_ip = str(sa.virtual_ip)
        yield self.until(
            lambda: "Interim-Update" in statuses(radius.detail(), sa.session_id),
            10,
            "an Interim-Update in FreeRADIUS's detail file",
        )
        ended = yield client.terminate()
        self.assertTrue(ended.ok, ended.output)
        yield self.until(
            lambda: "Stop" in statuses(radius.detail(), sa.session_id),
            10,
            f"a Stop in FreeRADIUS's detail file\n{radius.tail()}",
        )
        self.assert_session_records(radius.detail(), sa)
        self.assert_session_records(local_records(self.state / "accounting.log"), sa)
        self.assertEqual(
            statuses(radius.detail(), sa.session_id),
            statuses(local_records(self.state / "accounting.log"), sa.session_id),
        )
        run_id = self.daemon.accounting.accounting.run_id
        yield self.daemon.stopService()
        for records in (radius.detail(), local_records(self.state / "accounting.log")):
            kinds = [r["Acct-Status-Type"] for r in records]
            self.assertEqual(kinds[0], "Accounting-On", kinds)
            self.assertEqual(kinds[-1], "Accounting-Off", kinds)
            self.assertEqual(kinds.count("Accounting-On"), 1, kinds)
            for record in (records[0], records[-1]):
                self.assertEqual(record["Acct-Session-Id"], run_id)
                self.assertEqual(record["NAS-Identifier"], "vpnaaa")


class SecondVpnaaaTests(AccountingCase):
    def accounting_server(self) -> tuple[Path, int]:
        """A second vpnaaa, RADIUS only, that accepts the gateway's records: (its
        accounting log, its accounting port)."""
        server_state = state_dir(self)
        clients = (
            f'[[radius.clients]]\nname = "gateway"\naddress = "127.0.0.1"\n'
            f"secret = {json.dumps(SECRET)}\n"
        )
        add_users(server_state, {})
        server = start_daemon(self, radius_config(server_state, clients))
        return server_state / "accounting.log", ports(server)[1]

    @defer.inlineCallbacks
    def test_stopping_the_daemon_sends_admin_reboot(self):
        """SIGTERM's path: the session ends with SHUTDOWN and the daemon's stop waits until
        the server acknowledged the Stop (Admin-Reboot, RFC 2866 §5.10), then sends
        Accounting-Off (§5.1) and waits for its answer."""
        received, acct_port = self.accounting_server()
        self.start_accounting_gateway([f"127.0.0.1:{acct_port}"])
        _, sa = yield self.session()
        yield self.daemon.stopService()
        *_, stop, off = local_records(received)
        self.assertEqual(stop["Acct-Session-Id"], sa.session_id)
        self.assertEqual(stop["Acct-Status-Type"], "Stop")
        self.assertEqual(stop["Acct-Terminate-Cause"], "Admin-Reboot")
        self.assertEqual(off["Acct-Status-Type"], "Accounting-Off")
        self.assertEqual(off["NAS-Identifier"], "vpnaaa")

    @defer.inlineCallbacks
    def test_a_dead_first_server_fails_over_to_a_second_vpnaaa(self):
        """The first server never answers: the Accounting-On is sent there twice (0.6 s
        apart, a new Identifier each time), then to the second, a vpnaaa RADIUS server,
        with Acct-Delay-Time 1; the session's records go to the second (directly, once the
        fail-over happened)."""
        dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(dead.close)
        dead.bind((freeradius.LOOPBACK, 0))
        dead.setblocking(False)
        received, acct_port = self.accounting_server()
        self.start_accounting_gateway(
            [f"{freeradius.LOOPBACK}:{dead.getsockname()[1]}", f"127.0.0.1:{acct_port}"],
            timeout=0.6,
            tries=2,
        )
        client, sa = yield self.session()
        self.virtual_ip = str(sa.virtual_ip)
        yield self.until(
            lambda: "Interim-Update" in statuses(local_records(received), sa.session_id),
            10,
            "an Interim-Update at the second vpnaaa",
        )
        ended = yield client.terminate()
        self.assertTrue(ended.ok, ended.output)
        yield self.until(
            lambda: "Stop" in statuses(local_records(received), sa.session_id),
            10,
            "a Stop at the second vpnaaa",
        )
        self.assert_session_records(local_records(received), sa)
        self.assert_session_records(local_records(self.state / "accounting.log"), sa)
        on = local_records(received)[0]
        self.assertEqual(on["Acct-Status-Type"], "Accounting-On")
        self.assertEqual(on["Acct-Delay-Time"], 1)  # 1.2 s after the event
        self.assertEqual(local_records(received)[-1]["Acct-Delay-Time"], 0)
        tries = []
        while True:
            try:
                tries.append(wire.parse(dead.recv(4096)))
            except BlockingIOError:
                break
        # the Accounting-On first and twice (and a Start or Interim-Update sent before the
        # fail-over), never the Stop
        kinds = [int.from_bytes(p.get(wire.key("Acct-Status-Type")), "big") for p in tries]
        self.assertEqual((kinds[0], kinds.count(7)), (7, 2), kinds)
        self.assertLessEqual(set(kinds), {7, 1, 3})
        self.assertEqual(len({p.ident for p in tries}), len(tries))  # a new packet each try
        self.assertTrue(any("failing over to 127.0.0.1:" in line for line in self.lines))

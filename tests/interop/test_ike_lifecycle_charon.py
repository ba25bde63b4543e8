"""The gateway speaks first (RFC 7296 §1.4, §2.1-2.4), proven with strongSwan's charon.

charon runs as the client in a network namespace (:mod:`tests.interop.charon`); vpnaaa in
this process on the root end of the veth pair, or as a real ``twistd -n vpnaaa`` for SIGTERM.
Each case reads what charon says (its log, ``swanctl --list-sas``) and what the gateway
holds (its IKE SAs, leases, CHILD_SAs) and logs (the one line a session's end gets):

- liveness: charon answers the gateway's empty INFORMATIONALs and keeps its session; a client
  silenced with nftables is asked again on the retransmission schedule and then torn down;
- the IKE SA's lifetime ends in a DELETE that charon receives and answers;
- rekey = "gateway": the gateway rekeys the CHILD_SA and the IKE SA at their soft lifetimes,
  twice each, and charon (which never rekeys itself) follows;
- a client that lost its SA (killed) reconnects with N(INITIAL_CONTACT): the old session goes;
- max_sessions_per_user = 1 replaces the older session with a DELETE, or refuses the new one
  with AUTHENTICATION_FAILED;
- SIGTERM: every client gets a DELETE, the daemon exits within shutdown_wait.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import sys
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

from twisted.internet import defer, error, reactor, utils

from tests.interop import charon
from tests.interop.test_ike_charon import CharonTestCase
from tests.support import add_users, log_lines, write_config
from vpnaaa.users import User, read_users, write_users

BIN = Path(sys.executable).parent
DPD = 2.0  # seconds of silence before the gateway's liveness check
# the gateway's retransmissions: after 0.5, 0.75 and 1.125 s it gives up (2 tries after the first)
RETRANSMIT = {"retransmit_timeout": 0.5, "retransmit_base": 1.5, "retransmit_tries": 2}
GIVE_UP = sum(0.5 * 1.5**n for n in range(3))  # 2.375 s from the first liveness request
SHUTDOWN_WAIT = 2.0  # seconds clients get to answer the DELETE on SIGTERM
SLACK = 1.0  # the reactor, charon and the polling loop
# charon 5.9.8 sends N(INITIAL_CONTACT) in IKE_AUTH when it holds no other IKE_SA with the
# gateway, unless its unique policy is "never"
NO_INITIAL_CONTACT = {"unique": "never"}


def log_times(log: str, text: str) -> list[tuple[float, str]]:
    """(seconds since midnight, line) of charon's log lines containing ``text`` (the log's
    time_format is %H:%M:%S with milliseconds)."""
    found = []
    for line in log.splitlines():
        if text in line:
            hours, minutes, seconds = line.split(" ", 1)[0].split(":")
            found.append((3600 * int(hours) + 60 * int(minutes) + float(seconds), line))
    return found


def options(**values: object) -> str:
    return "".join(f"{key} = {value}\n" for key, value in values.items())


class LifecycleCase(CharonTestCase):
    """CharonTestCase plus the gateway's log lines and helpers for several clients."""

    timeout = 45

    @defer.inlineCallbacks
    def setUp(self) -> Generator[defer.Deferred[Any], Any, None]:
        yield super().setUp()
        self.lines: list[str] = log_lines(self)

    @property
    def responder(self) -> Any:
        return self.daemon.ike.responder

    def session_ends(self) -> list[str]:
        return [line for line in self.lines if "session of" in line and " ended: " in line]

    @defer.inlineCallbacks
    def client(
        self, name: str, netns: charon.Netns | None = None, **initiator: Any
    ) -> Generator[defer.Deferred[Any], Any, charon.Charon]:
        """A started, connected charon in ``netns`` (default: the case's); fails the test
        unless the CHILD_SA came up."""
        netns = netns or self.netns
        role = charon.Initiator(gateway=self.netns.gateway_address, ca_cert=self.ca, **initiator)
        client = yield charon.start_charon(self, self.state / name, netns.name, role)
        result = yield client.initiate()
        if not result.ok:
            self.fail(result.output + client.tail())
        return client

    @defer.inlineCallbacks
    def second_namespace(self) -> Generator[defer.Deferred[Any], Any, charon.Netns]:
        """Another client namespace (its own /30 on the root side) that reaches the gateway's
        address through its own veth."""
        netns = yield charon.make_netns(self)
        yield netns.route(self.netns.gateway_address)
        return netns

    @defer.inlineCallbacks
    def until(
        self, condition: Any, within: float, what: str
    ) -> Generator[defer.Deferred[Any], Any, float]:
        """Poll ``condition()`` until true; the seconds it took. Fails after ``within``."""
        start = time.monotonic()
        while not condition():
            if time.monotonic() - start > within:
                self.fail(f"not within {within:.1f} s: {what}")
            yield charon.sleep(0.05)
        return time.monotonic() - start

    def assertOneSession(self, client: charon.Charon, sa: charon.IkeSa) -> None:
        """The gateway holds exactly ``sa`` (charon's view): one IKE SA, one lease, one
        CHILD_SA with charon's SPIs."""
        self.assertEqual(list(self.responder.sas), [sa.spi_r])
        self.assertEqual(self.responder.context.pool.leased, 1)
        (spec,) = self.installer.installed.values()
        (child,) = sa.children
        self.assertEqual((spec.inbound_spi, spec.outbound_spi), (child.spi_out, child.spi_in))

    def assertNothingLeft(self) -> None:
        self.assertEqual(self.responder.sas, {})
        self.assertEqual(self.responder.context.pool.leased, 0)
        self.assertEqual(self.installer.installed, {})


class LivenessTests(LifecycleCase):
    @defer.inlineCallbacks
    def test_charon_answers_then_a_silenced_client_is_torn_down(self):
        """§1.4: dpd_delay seconds after the last word from charon, an empty INFORMATIONAL;
        charon answers each and keeps its session. Right after its second answer the client
        namespace drops everything towards the gateway: the next check comes dpd_delay
        later and is sent again on the back-off schedule (charon still receives those:
        "received retransmit of request"); after the last wait the session is gone with
        its lease and CHILD_SA, in one log line."""
        self.start_gateway(options(dpd_delay=DPD, **RETRANSMIT))
        client = yield self.client("charon")
        (sa,) = yield client.list_sas()
        answered = "generating INFORMATIONAL response"
        yield self.until(
            lambda: client.log_text().count(answered) >= 2, 3 * DPD + SLACK, "two checks"
        )
        yield self.netns.silence(self.netns.gateway_address)
        silenced = time.monotonic()
        self.assertOneSession(client, sa)  # a peer that answers keeps its session
        yield self.until(
            lambda: not self.responder.sas, 2 * (DPD + GIVE_UP), "the dead peer is removed"
        )
        took = time.monotonic() - silenced
        self.assertNothingLeft()
        (end,) = self.session_ends()
        self.assertIn("session of 'alice' ended: dead peer (no answer to 3 liveness", end)

        log = client.log_text()
        # the checks are empty INFORMATIONALs with the gateway's own message IDs 0, 1, 2
        requests = log_times(log, "parsed INFORMATIONAL request")
        answers = log_times(log, answered)
        self.assertEqual([text[-5:] for _, text in requests], ["0 [ ]", "1 [ ]", "2 [ ]"])
        self.assertEqual(log.count("received retransmit of request with ID 2"), 2, client.tail())
        # each check dpd_delay after charon's last answer (it sends nothing else)
        pairs = zip(requests[1:], answers[: len(requests) - 1], strict=True)
        gaps = [request - answer for (request, _), (answer, _) in pairs]
        self.assertTrue(all(abs(gap - DPD) < 0.3 for gap in gaps), f"checks {gaps} s after")
        self.assertLess(took, DPD + GIVE_UP + 0.5)
        self.assertGreater(took, GIVE_UP)


class DeleteTests(LifecycleCase):
    @defer.inlineCallbacks
    def test_vpnaaa_disconnect_ends_the_users_session(self):
        """`vpnaaa disconnect alice` (the CLI, over the admin socket): the gateway sends a
        DELETE for her IKE SA (§1.4.1), charon deletes it and answers, nothing is left,
        and the session's end says who ended it. `vpnaaa sessions` showed its session id
        first (the Acct-Session-Id of later accounting)."""
        self.start_gateway()
        client = yield self.client("charon")
        (sa,) = self.responder.sas.values()
        shown = yield self.cli("sessions", "--json")
        (session,) = json.loads(shown)
        self.assertEqual(session["session_id"], sa.session_id)
        self.assertRegex(sa.session_id, "^[0-9A-F]{16}$")
        said = yield self.cli("disconnect", "ALICE")
        self.assertIn(sa.session_id, said)
        yield self.until(lambda: not self.responder.sas, 2 * SLACK, "the IKE SA ends")
        self.assertNothingLeft()
        (end,) = self.session_ends()
        self.assertIn("ended: disconnected by the administrator (admin API)", end)
        self.assertIn("received DELETE for IKE_SA vpnaaa[1]", client.log_text(), client.tail())
        refused = yield self.cli("disconnect", "alice", status=1)
        self.assertIn("no live session of alice", refused)

    @defer.inlineCallbacks
    def test_a_changed_password_ends_the_users_sessions_on_reload(self):
        """[users] disconnect_on_change: after `vpnaaa user passwd` (here: the file
        rewritten) and SIGHUP (reload), alice's session ends with a DELETE that charon
        receives."""
        self.start_gateway(users="disconnect_on_change = true")
        alice = yield self.client("charon")
        users = read_users(self.state / "users.json")
        users["alice"] = User.create("alice", "a new password")
        write_users(self.state / "users.json", users)
        self.daemon.reload()
        yield self.until(lambda: not self.responder.sas, 2 * SLACK, "alice's IKE SA ends")
        self.assertNothingLeft()
        (end,) = self.session_ends()
        self.assertIn("disconnected by a user change (alice password changed)", end)
        self.assertIn("received DELETE for IKE_SA vpnaaa[1]", alice.log_text(), alice.tail())

    @defer.inlineCallbacks
    def cli(self, *args: str, status: int = 0) -> Generator[defer.Deferred[Any], Any, str]:
        """`vpnaaa` with this case's configuration, run without blocking the reactor the
        daemon runs on; its output (stderr when it fails), after checking its status."""
        config = str(self.state / "vpnaaa.toml")
        out, err, code = yield utils.getProcessOutputAndValue(
            str(BIN / "vpnaaa"), ["--config", config, *args]
        )
        self.assertEqual(code, status, (out, err))
        return (out if status == 0 else err).decode()

    @defer.inlineCallbacks
    def test_the_lifetime_ends_in_a_delete_charon_answers(self):
        """§1.4.1: at ike_lifetime (up to a tenth early) the gateway sends a DELETE for the
        IKE SA; charon deletes its IKE_SA and answers, and nothing is left on either side.
        The configuration allows 30 s at least, so the responder's timing is shortened
        here, before the session starts."""
        self.start_gateway()
        lifetime = 3.0
        self.responder.timing = dataclasses.replace(self.responder.timing, ike_lifetime=lifetime)
        started = time.monotonic()
        client = yield self.client("charon")
        yield self.until(lambda: not self.responder.sas, lifetime + SLACK, "the IKE SA ends")
        self.assertGreaterEqual(time.monotonic() - started, 0.9 * lifetime)
        self.assertNothingLeft()
        (end,) = self.session_ends()
        self.assertIn("session of 'alice' ended: lifetime", end)
        log = client.log_text()
        self.assertIn("received DELETE for IKE_SA vpnaaa[1]", log, client.tail())
        self.assertIn("IKE_SA deleted", log)
        self.assertEqual((yield client.list_sas()), [])


class GatewayRekeyTests(LifecycleCase):
    """rekey = "gateway" at the shortest lifetimes the configuration allows (30 s)."""

    timeout = 100
    LIFETIME = 30  # ike_lifetime and child_lifetime: config.py's minimum
    JITTER = 0.9  # the responder's jitter, fixed: rekeys at 0.81 L, hard lifetimes at 0.91 L

    def rekey_requests(self, log: str) -> tuple[list[float], list[float]]:
        """When charon parsed the gateway's CREATE_CHILD_SA requests: (IKE rekeys, CHILD_SA
        rekeys); a CHILD_SA rekey carries N(REKEY_SA) (RFC 7296 §1.3.3), an IKE rekey a KE
        and no TSi/TSr (§1.3.2)."""
        requests = log_times(log, "parsed CREATE_CHILD_SA request")
        ike = [when for when, line in requests if "N(REKEY_SA)" not in line and " KE " in line]
        child = [when for when, line in requests if "N(REKEY_SA)" in line]
        return ike, child

    @defer.inlineCallbacks
    def test_the_gateway_rekeys_ike_and_child_sas_and_charon_follows(self):
        """§1.3.2, §1.3.3, §2.8, §2.18: charon never rekeys (rekey_time = 0 for its IKE_SA
        and CHILD_SA, no hard lifetime either); the gateway, with both lifetimes at 30 s,
        sends a CREATE_CHILD_SA for each 0.8-0.9 x 30 s after it came up, then deletes the
        old one. Two rounds: charon's log shows the gateway's requests, each rekey and each
        DELETE of an old SA. At the end charon's IKE_SA is the third (the gateway its
        initiator: §2.18), with new SPIs, the same virtual IP and one CHILD_SA whose SPIs and
        keys (§2.17, the gateway's nonce first) the gateway holds; the session never ended.
        charon's disconnect then leaves nothing."""
        lifetimes = options(rekey='"gateway"', ike_lifetime=self.LIFETIME)
        self.start_gateway(lifetimes + options(child_lifetime=self.LIFETIME))
        self.responder.context.jitter = lambda: self.JITTER
        client = yield self.client(
            "charon", child={"rekey_time": 0, "life_time": 3600}, connection={"reauth_time": 0}
        )
        (first,) = yield client.list_sas()
        (first_child,) = first.children

        def rekeyed_twice() -> bool:
            log = client.log_text()
            return (
                "received DELETE for IKE_SA vpnaaa[2]" in log
                and log.count("received DELETE for ESP CHILD_SA") >= 2
            )

        soft_max = 0.9 * self.LIFETIME
        yield self.until(rekeyed_twice, 2 * soft_max + 3 * SLACK, "two rekeys of each SA")
        log = client.log_text()

        # every rekey was the gateway's, two of each, each 0.8-0.9 x 30 s after the last
        self.assertNotIn("generating CREATE_CHILD_SA request", log)
        ike_rekeys, child_rekeys = self.rekey_requests(log)
        self.assertEqual((len(ike_rekeys), len(child_rekeys)), (2, 2), client.tail(80))
        ((established, _),) = log_times(log, "IKE_SA vpnaaa[1] established between")
        for kind, times in (("IKE", ike_rekeys), ("CHILD", child_rekeys)):
            gaps = [b - a for a, b in zip([established, *times], times, strict=False)]
            within = all(0.8 * self.LIFETIME - 0.5 < gap < soft_max + SLACK for gap in gaps)
            self.assertTrue(within, f"{kind} rekeys {gaps} s after the last")
        for new in ("vpnaaa[2]", "vpnaaa[3]"):
            self.assertIn(f"IKE_SA {new} rekeyed between", log)
        for old in ("vpnaaa[1]", "vpnaaa[2]"):
            self.assertIn(f"received DELETE for IKE_SA {old}", log)
        self.assertIn(f"received DELETE for ESP CHILD_SA with SPI {first_child.spi_out:08x}", log)

        # charon and the gateway agree: one IKE SA, one CHILD_SA, one lease, and the keys
        (sa,) = yield client.list_sas()
        self.assertEqual((sa.state, sa.uniqueid, sa.initiator), ("ESTABLISHED", 3, False))
        self.assertNotIn(sa.spi_i, (first.spi_i, first.spi_r))
        self.assertNotIn(sa.spi_r, (first.spi_i, first.spi_r))
        self.assertEqual(sa.local_vips, first.local_vips)
        # charon keeps a CHILD_SA it saw rekeyed a few seconds more for late inbound ESP
        # (DELETED, its delete_rekeyed_delay); the gateway holds the new one only
        (now,) = [child for child in sa.children if child.state == "INSTALLED"]
        self.assertEqual(now.uniqueid, 3)
        self.assertTrue(all(child.state == "DELETED" for child in sa.children if child != now))
        self.assertNotIn(now.spi_in, (first_child.spi_in, first_child.spi_out))
        self.assertEqual(list(self.responder.sas), [sa.spi_i])  # the gateway's own SPI
        self.assertEqual(self.responder.context.pool.leased, 1)
        (spec,) = self.installer.installed.values()
        self.assertEqual((spec.inbound_spi, spec.outbound_spi), (now.spi_out, now.spi_in))
        keys = client.keys().children()[-1]  # the gateway initiated: its outbound keys first
        self.assertEqual(
            (spec.outbound_encr_key, spec.outbound_integ_key),
            (keys.encr_i, keys.integ_i),
        )
        self.assertEqual(
            (spec.inbound_encr_key, spec.inbound_integ_key), (keys.encr_r, keys.integ_r)
        )
        self.assertEqual(self.session_ends(), [])

        # charon disconnects: nothing left on either side, one session end
        result = yield client.terminate()
        self.assertTrue(result.ok, result.output + client.tail())
        self.assertEqual((yield client.list_sas()), [])
        yield self.until(lambda: not self.responder.sas, SLACK, "the session ends")
        self.assertNothingLeft()
        (end,) = self.session_ends()
        self.assertIn("session of 'alice' ended: client delete", end)


class UniquenessTests(LifecycleCase):
    @defer.inlineCallbacks
    def test_initial_contact_replaces_the_session_a_killed_client_left(self):
        """§2.4: charon is killed (no DELETE: the gateway still holds its session), a new
        charon from the same address connects and, holding no IKE_SA with the gateway,
        says INITIAL_CONTACT: alice's old session goes at once, its lease and CHILD_SA
        with it, and the new one is the only one."""
        self.start_gateway()
        old = yield self.client("old")
        (old_sa,) = yield old.list_sas()
        yield old.kill()
        self.assertOneSession(old, old_sa)  # the gateway cannot know yet
        new = yield self.client("new")
        self.assertIn("N(INIT_CONTACT)", new.log_text())
        (sa,) = yield new.list_sas()
        self.assertNotEqual(sa.spi_r, old_sa.spi_r)
        self.assertOneSession(new, sa)
        (end,) = self.session_ends()
        self.assertIn("session of 'alice' ended: replaced: INITIAL_CONTACT", end)

    @defer.inlineCallbacks
    def test_max_sessions_per_user_replaces_the_older_session(self):
        """max_sessions_per_user = 1 (session_limit = "replace"): alice connects from a
        second namespace without INITIAL_CONTACT; the first charon receives a DELETE for
        its IKE_SA and the second is the one session the gateway holds."""
        self.start_gateway(options(max_sessions_per_user=1))
        first = yield self.client("first")
        other = yield self.second_namespace()
        second = yield self.client("second", other, connection=NO_INITIAL_CONTACT)
        self.assertNotIn("N(INIT_CONTACT)", second.log_text())
        yield self.until(
            lambda: "IKE_SA deleted" in first.log_text(), SLACK, "the first charon is told"
        )
        self.assertIn("received DELETE for IKE_SA vpnaaa[1]", first.log_text())
        self.assertEqual((yield first.list_sas()), [])
        (sa,) = yield second.list_sas()
        self.assertOneSession(second, sa)
        (end,) = self.session_ends()
        self.assertIn("session of 'alice' ended: replaced: max_sessions_per_user", end)

    @defer.inlineCallbacks
    def test_max_sessions_per_user_refuses_the_new_session(self):
        """session_limit = "refuse": the second charon's IKE_AUTH ends in
        AUTHENTICATION_FAILED after EAP; the first session stays as it was."""
        self.start_gateway(options(max_sessions_per_user=1, session_limit='"refuse"'))
        first = yield self.client("first")
        (sa,) = yield first.list_sas()
        other = yield self.second_namespace()
        role = charon.Initiator(
            gateway=self.netns.gateway_address, ca_cert=self.ca, connection=NO_INITIAL_CONTACT
        )
        second = yield charon.start_charon(self, self.state / "second", other.name, role)
        result = yield second.initiate()
        self.assertFalse(result.ok)
        self.assertIn("received AUTHENTICATION_FAILED notify error", second.log_text())
        refused = [line for line in self.lines if "(max_sessions_per_user = 1)" in line]
        self.assertEqual(len(refused), 1, self.lines)
        self.assertEqual((yield first.list_sas())[0].state, "ESTABLISHED")
        self.assertOneSession(first, sa)
        self.assertEqual(self.session_ends(), [])


class ShutdownTests(LifecycleCase):
    timeout = 60

    @defer.inlineCallbacks
    def daemon_started(self) -> Generator[defer.Deferred[Any], Any, Any]:
        """``twistd -n vpnaaa`` (as root, ``[daemon] user = "root"``) on the veth's address;
        its process transport once the IKE responder is up. Stopped at cleanup."""
        text = (
            f'[general]\nstate_dir = "{self.state}"\nlog_level = "info"\n'
            '[daemon]\nuser = "root"\n[radius]\nenabled = false\n[admin]\nport = 0\n'
            f'[ike]\nenabled = true\ninstaller = "null"\nlisten = "{self.netns.gateway_address}"\n'
            f'pool = "10.99.7.0/24"\n{options(shutdown_wait=SHUTDOWN_WAIT)}'
        )
        path = write_config(self.state / "vpnaaa.toml", text)
        self.process = charon.ChildProcess()
        argv = [str(BIN / "twistd"), "-n", "--pidfile=", "vpnaaa", "--config", str(path)]
        env = {"PATH": charon.PATH, "LC_ALL": "C", "PYTHONUNBUFFERED": "1"}
        transport = reactor.spawnProcess(self.process, argv[0], argv, env=env)
        self.addCleanup(self.stop, transport)
        yield self.until(
            lambda: b"IKEv2 responder on" in self.process.output or self.process.ended.called,
            30,
            "the daemon starts",
        )
        self.assertFalse(self.process.ended.called, self.process.output.decode())
        return transport

    @defer.inlineCallbacks
    def stop(self, transport: Any) -> Generator[defer.Deferred[Any], Any, None]:
        if not self.process.ended.called:
            with contextlib.suppress(error.ProcessExitedAlready):
                transport.signalProcess("KILL")
            yield self.process.ended

    @defer.inlineCallbacks
    def test_sigterm_deletes_every_session_and_waits_a_bounded_time(self):
        """SIGTERM: alice's and bob's charons each receive a DELETE for their IKE_SA
        (§1.4.1). Alice answers; bob's namespace drops what it sends, so the daemon waits
        shutdown_wait seconds for him, no longer, and exits 0."""
        add_users(
            self.state,
            {"alice": User.create("alice", "wonderland"), "bob": User.create("bob", "builder")},
        )
        transport = yield self.daemon_started()
        alice = yield self.client("alice")
        other = yield self.second_namespace()
        bob = yield self.client("bob", other, eap_id="bob", password="builder")
        yield other.silence(self.netns.gateway_address)
        started = time.monotonic()
        transport.signalProcess("TERM")
        yield self.until(lambda: self.process.ended.called, SHUTDOWN_WAIT + 5, "the daemon exits")
        took = time.monotonic() - started
        output = self.process.output.decode(errors="replace")
        # a clean stop; twistd then ends itself with the signal that stopped it
        self.assertIn("Server Shut Down.", output)
        self.assertEqual(
            (self.process.exit_code, self.process.exit_signal), (None, signal.SIGTERM), output
        )
        self.assertGreaterEqual(took, SHUTDOWN_WAIT)
        self.assertLess(took, SHUTDOWN_WAIT + 2.0)
        for client in (alice, bob):
            self.assertIn("received DELETE for IKE_SA vpnaaa[1]", client.log_text(), client.tail())
        self.assertEqual((yield alice.list_sas()), [])
        for user in ("alice", "bob"):
            self.assertIn(f"session of '{user}' ended: shutdown", output)

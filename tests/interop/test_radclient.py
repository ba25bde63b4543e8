"""vpnaaa's RADIUS server against FreeRADIUS's own clients, ``radclient`` and ``radtest``.

Each test starts the daemon in this process on free UDP ports of 127.0.0.1 and runs the
Debian ``freeradius-utils`` binaries as child processes (asynchronously: the server answers
from the same reactor). Assertions are on what radclient printed with ``-x``: the reply
code and the attribute values it decoded, which it only prints after checking the Response
Authenticator and any Message-Authenticator with the shared secret.

A request the server drops gets no reply at all; radclient is run with ``-r 1 -t 1`` there
so each such test costs about a second.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

from twisted.internet import defer
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest

from tests.support import SECRET, add_users, ports, radius_config, start_daemon, state_dir
from vpnaaa.users import User

RADCLIENT = shutil.which("radclient")
RADTEST = shutil.which("radtest")

# RFC 2759 §9.2 sample (the MS-CHAPv2 exchange with its published intermediate values).
RFC2759_USER = "User"
RFC2759_PASSWORD = "clientPass"
RFC2759_AUTH_CHALLENGE = "5B5D7C7D7B3F2F3E3C2C602132262628"
RFC2759_PEER_CHALLENGE = "21402324255E262A28295F2B3A337C7E"
RFC2759_NT_RESPONSE = "82309ECD8D708B5EA08FAA3981CD83544233114A3D85D6DF"
RFC2759_AUTHENTICATOR_RESPONSE = "S=407A5589115FD0D6209F510FE9C04566932CDA56"
RFC2759_PASSWORD_HASH_HASH = "41C00C584BD2D91C4017A2A12FA59F3F"
# RFC 3079 §3.5.3: the server's initial 128-bit send key for the same exchange.
RFC3079_SEND_START_KEY_128 = "8B7CDC149B993A1BA118CB153F56DCCB"
MSCHAP2_IDENT = 0x07

REJECT_MESSAGE = "Authentication failed"
LONG = "0123456789" * 10  # 100 octets: seven 16-octet blocks of User-Password hiding
FAST = ("-r", "1", "-t", "1")  # one try, one second: for requests that must get no reply
PATIENT = ("-r", "1", "-t", "3")  # one try, but room for a PBKDF2 check on a busy machine

_RECEIVED = re.compile(r"^Received (\S+) Id (\d+) from ")
_SENT = re.compile(r"^Sent (\S+) Id (\d+) from ")
_ATTRIBUTE = re.compile(r"^\t(\S+) = (.*)$")
_ESCAPE = re.compile(rb"\\([0-7]{3}|.)", re.DOTALL)
_SIMPLE_ESCAPES = {b"n": b"\n", b"r": b"\r", b"t": b"\t"}


def _unescape(match: re.Match[bytes]) -> bytes:
    escaped = match.group(1)
    if len(escaped) == 3:
        return bytes([int(escaped, 8)])
    return _SIMPLE_ESCAPES.get(escaped, escaped)


def radclient_value(text: str) -> str:
    """A value as radclient prints it: quoted strings unescaped (FreeRADIUS writes
    non-printable octets as ``\\ooo``), anything else (``0x...`` octets, numbers,
    enumeration names, addresses) verbatim."""
    if len(text) >= 2 and text[0] == text[-1] == '"':
        raw = _ESCAPE.sub(_unescape, text[1:-1].encode("utf-8"))
        return raw.decode("utf-8", "surrogateescape")
    return text


@dataclass
class Reply:
    """What one radclient run reported about the (single) request it sent."""

    code: str | None  # "Access-Accept", ... or None when no reply arrived
    request_id: int | None  # the Identifier radclient used
    attributes: list[tuple[str, str]]  # the reply's attributes, in packet order
    exit_code: int
    output: str  # everything radclient printed, for failure messages

    def values(self, name: str) -> list[str]:
        return [value for key, value in self.attributes if key == name]

    def one(self, name: str) -> str:
        values = self.values(name)
        if len(values) != 1:
            raise AssertionError(f"expected one {name}, got {values!r}:\n{self.output}")
        return values[0]


def parse_radclient(output: str, exit_code: int) -> Reply:
    """Read radclient's ``-x`` trace: the Sent/Received headers and their tab-indented
    ``Name = value`` lines."""
    code = request_id = None
    attributes: list[tuple[str, str]] = []
    in_reply = False
    for line in output.splitlines():
        sent, received = _SENT.match(line), _RECEIVED.match(line)
        if sent:
            request_id, in_reply = int(sent.group(2)), False
        elif received:
            if code is not None:
                raise AssertionError(f"more than one reply:\n{output}")
            code, in_reply = received.group(1), True
        elif in_reply and (attribute := _ATTRIBUTE.match(line)):
            attributes.append((attribute.group(1), radclient_value(attribute.group(2))))
        else:
            in_reply = False
    return Reply(code, request_id, attributes, exit_code, output)


class RadclientTestCase(unittest.TestCase):
    """Starts a daemon with a few users; ``radclient`` and ``radtest`` talk to it."""

    def setUp(self) -> None:
        if RADCLIENT is None:
            raise unittest.SkipTest("radclient not found (install Debian's freeradius-utils)")
        self.state = state_dir(self)
        add_users(
            self.state,
            {
                "alice": User.create("alice", "wonderland", chap=True),
                "bob": User.create("bob", "builder"),
                "long": User.create("long", LONG),
                RFC2759_USER: User.create(RFC2759_USER, RFC2759_PASSWORD),
            },
        )
        self.requests = 0

    def start(self, clients: str | None = None) -> None:
        """Start the daemon; ``clients`` replaces the default loopback client table."""
        self.daemon = start_daemon(self, radius_config(self.state, clients))
        self.auth_port, self.acct_port = ports(self.daemon)

    @defer.inlineCallbacks
    def spawn(self, *args: str) -> Generator[defer.Deferred[object], object, Reply]:
        """Run ``args`` (an executable and its arguments) and parse its ``-x`` trace."""
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}
        out, err, code = yield getProcessOutputAndValue(args[0], args[1:], env=env)
        return parse_radclient((out + err).decode("utf-8", "replace"), code)

    def radclient(
        self,
        command: str,
        attributes: str,
        *,
        port: int | None = None,
        secret: str = SECRET,
        options: tuple[str, ...] = PATIENT,
    ) -> defer.Deferred[Reply]:
        """``radclient -x`` sending one packet of ``command`` with ``attributes`` (one
        ``Name = value`` per line) to the auth port (the acct port for ``acct``)."""
        if port is None:
            port = self.acct_port if command == "acct" else self.auth_port
        self.requests += 1
        packet = Path(self.state, f"request-{self.requests}.txt")
        packet.write_text(attributes)
        target = f"127.0.0.1:{port}"
        return self.spawn(RADCLIENT, "-x", *options, "-f", str(packet), target, command, secret)

    def radtest(self, method: str, user: str, password: str) -> defer.Deferred[Reply]:
        """``radtest -t method``: radclient with the password turned into ``method``'s
        attributes (it always adds Message-Authenticator). NAS address given, so radtest
        does not resolve this host's name."""
        if RADTEST is None:
            raise unittest.SkipTest("radtest not found (install Debian's freeradius-utils)")
        target = f"127.0.0.1:{self.auth_port}"
        return self.spawn(
            RADTEST, "-t", method, user, password, target, "0", SECRET, "0", "127.0.0.1"
        )

    def assertReply(self, reply: Reply, code: str) -> None:
        """``code`` came back; Access-* replies carry Message-Authenticator as their first
        attribute (vpnaaa signs every one; radclient printed it, so it verified)."""
        self.assertEqual(reply.code, code, f"radclient reported:\n{reply.output}")
        if code.startswith("Access-"):
            self.assertTrue(reply.attributes, f"no attributes:\n{reply.output}")
            self.assertEqual(reply.attributes[0][0], "Message-Authenticator", reply.output)
            self.assertRegex(reply.attributes[0][1], r"^0x[0-9a-f]{32}$")

    def assertNoReply(self, reply: Reply) -> None:
        """The server stayed silent: radclient gave up waiting."""
        self.assertIsNone(reply.code, f"expected silence, radclient reported:\n{reply.output}")
        self.assertIn("No reply from server", reply.output)
        self.assertNotEqual(reply.exit_code, 0)

    def assertRejected(self, reply: Reply) -> None:
        """RFC 2865 §4.4 Access-Reject with vpnaaa's fixed Reply-Message (§5.18)."""
        self.assertReply(reply, "Access-Reject")
        self.assertEqual(reply.values("Reply-Message"), [REJECT_MESSAGE], reply.output)
        self.assertNotEqual(reply.exit_code, 0)


def mschapv2_attributes(nt_response: str = RFC2759_NT_RESPONSE) -> str:
    """The RFC 2759 §9.2 exchange as RFC 2548 §2.3.2 attributes: MS-CHAP2-Response is
    Ident, Flags, Peer-Challenge (16), Reserved (8 zero octets), NT-Response (24)."""
    response = f"{MSCHAP2_IDENT:02X}00{RFC2759_PEER_CHALLENGE}{'00' * 8}{nt_response}"  # 50 octets
    return (
        f'User-Name = "{RFC2759_USER}"\n'
        f"MS-CHAP-Challenge = 0x{RFC2759_AUTH_CHALLENGE}\n"
        f"MS-CHAP2-Response = 0x{response}\n"
    )


LEGACY_CLIENT = (
    f'[[radius.clients]]\nname = "legacy"\naddress = "127.0.0.1"\nsecret = "{SECRET}"\n'
    "allow_chap = true\nallow_mschapv1 = true\n"
)


class AccessTests(RadclientTestCase):
    """Access-Request with each password method (RFC 2865 §4.1); the client entry opts in
    to CHAP and MS-CHAPv1."""

    def setUp(self) -> None:
        super().setUp()
        self.start(LEGACY_CLIENT)

    @defer.inlineCallbacks
    def test_pap_accept(self):
        """PAP (RFC 2865 §5.2) with the right password: Access-Accept."""
        reply = yield self.radclient("auth", 'User-Name = "alice"\nUser-Password = "wonderland"\n')
        self.assertReply(reply, "Access-Accept")
        self.assertEqual(reply.exit_code, 0)

    @defer.inlineCallbacks
    def test_pap_long_password(self):
        """A 100-octet password: seven 16-octet blocks of RFC 2865 §5.2 hiding."""
        reply = yield self.radclient("auth", f'User-Name = "long"\nUser-Password = "{LONG}"\n')
        self.assertReply(reply, "Access-Accept")

    @defer.inlineCallbacks
    def test_pap_wrong_password(self):
        """PAP with a wrong password: Access-Reject with Reply-Message."""
        reply = yield self.radclient("auth", 'User-Name = "alice"\nUser-Password = "wonder"\n')
        self.assertRejected(reply)

    @defer.inlineCallbacks
    def test_pap_unknown_user(self):
        """An unknown user is rejected exactly like a wrong password."""
        reply = yield self.radclient("auth", 'User-Name = "mallory"\nUser-Password = "x"\n')
        self.assertRejected(reply)

    @defer.inlineCallbacks
    def test_chap_accept(self):
        """CHAP (RFC 2865 §5.3, RFC 1994 §4.1) for a user stored with chap=True."""
        reply = yield self.radtest("chap", "alice", "wonderland")
        self.assertIn("CHAP-Password = 0x", reply.output)  # radtest really sent CHAP
        self.assertReply(reply, "Access-Accept")

    @defer.inlineCallbacks
    def test_chap_wrong_password(self):
        reply = yield self.radtest("chap", "alice", "wonderlant")
        self.assertRejected(reply)

    @defer.inlineCallbacks
    def test_chap_without_cleartext(self):
        """CHAP needs the cleartext password; a user without it is rejected."""
        reply = yield self.radtest("chap", "bob", "builder")
        self.assertRejected(reply)

    @defer.inlineCallbacks
    def test_mschapv1_accept(self):
        """MS-CHAPv1 (RFC 2548 §2.1): Access-Accept with MS-CHAP-MPPE-Keys (§2.4.1).

        radclient un-hides the keys with the secret: an 8-octet LM key (zero, vpnaaa keeps
        no LM hash) and the 16-octet NT key, the hash of the NT password hash, published
        for "clientPass" as PasswordHashHash in RFC 2759 §9.2.
        """
        reply = yield self.radtest("mschap", RFC2759_USER, RFC2759_PASSWORD)
        self.assertIn("MS-CHAP-Response = 0x", reply.output)
        self.assertReply(reply, "Access-Accept")
        keys = reply.one("MS-CHAP-MPPE-Keys")
        self.assertEqual(keys, "0x" + "00" * 8 + RFC2759_PASSWORD_HASH_HASH.lower())
        self.assertEqual(reply.values("MS-MPPE-Encryption-Policy"), ["Encryption-Allowed"])
        self.assertEqual(reply.values("MS-MPPE-Encryption-Types"), ["RC4-40or128-bit-Allowed"])

    @defer.inlineCallbacks
    def test_mschapv1_wrong_password(self):
        """RFC 2548 §2.1.5: MS-CHAP-Error echoes the ident (radtest uses 0), E=691."""
        reply = yield self.radtest("mschap", RFC2759_USER, "serverPass")
        self.assertRejected(reply)
        error = reply.one("MS-CHAP-Error")
        self.assertEqual(error[0], "\x00", reply.output)
        self.assertIn("E=691", error)
        self.assertEqual(reply.values("MS-CHAP-MPPE-Keys"), [])

    @defer.inlineCallbacks
    def test_mschapv2_rfc2759_sample(self):
        """The RFC 2759 §9.2 exchange: MS-CHAP2-Success is the ident and the published
        authenticator response (RFC 2548 §2.3.3); radclient decrypts MS-MPPE-Send-Key
        (RFC 2548 §2.4.2 salt encryption) and prints the bare key, which must be the
        server's send key SendStartKey128 of RFC 3079 §3.5.3."""
        reply = yield self.radclient("auth", mschapv2_attributes())
        self.assertReply(reply, "Access-Accept")
        success = bytes([MSCHAP2_IDENT]) + RFC2759_AUTHENTICATOR_RESPONSE.encode()
        self.assertEqual(reply.one("MS-CHAP2-Success"), "0x" + success.hex())
        self.assertEqual(reply.one("MS-MPPE-Send-Key"), "0x" + RFC3079_SEND_START_KEY_128.lower())
        recv = reply.one("MS-MPPE-Recv-Key")
        self.assertRegex(recv, r"^0x[0-9a-f]{32}$")
        self.assertNotEqual(recv, reply.one("MS-MPPE-Send-Key"))
        self.assertEqual(reply.values("MS-MPPE-Encryption-Policy"), ["Encryption-Allowed"])
        self.assertEqual(reply.values("MS-MPPE-Encryption-Types"), ["RC4-40or128-bit-Allowed"])

    @defer.inlineCallbacks
    def test_mschapv2_wrong_response(self):
        """A wrong NT-Response: Access-Reject with MS-CHAP-Error (RFC 2548 §2.1.5) =
        ident + "E=691 R=0 C=... V=3" (RFC 2759 §6), and no keys."""
        wrong = RFC2759_NT_RESPONSE[:-2] + "00"
        reply = yield self.radclient("auth", mschapv2_attributes(wrong))
        self.assertRejected(reply)
        error = reply.one("MS-CHAP-Error")
        self.assertEqual(error[0], chr(MSCHAP2_IDENT), reply.output)
        self.assertRegex(error[1:], r"^E=691 R=0 C=[0-9A-F]{32} V=3")
        self.assertEqual(reply.values("MS-CHAP2-Success"), [])
        self.assertEqual(reply.values("MS-MPPE-Send-Key"), [])


class LegacyMethodTests(RadclientTestCase):
    """CHAP and MS-CHAPv1 are refused for a client entry that does not allow them."""

    def setUp(self) -> None:
        super().setUp()
        self.start()

    def assertRefused(self, reply: Reply, method: str) -> None:
        self.assertReply(reply, "Access-Reject")
        self.assertEqual(
            reply.values("Reply-Message"), [f"{method} is not allowed for this client"]
        )

    @defer.inlineCallbacks
    def test_chap_refused(self):
        reply = yield self.radtest("chap", "alice", "wonderland")
        self.assertIn("CHAP-Password = 0x", reply.output)
        self.assertRefused(reply, "CHAP")

    @defer.inlineCallbacks
    def test_mschapv1_refused(self):
        reply = yield self.radtest("mschap", RFC2759_USER, RFC2759_PASSWORD)
        self.assertIn("MS-CHAP-Response = 0x", reply.output)
        self.assertRefused(reply, "MS-CHAPv1")
        self.assertEqual(reply.values("MS-CHAP-MPPE-Keys"), [])

    @defer.inlineCallbacks
    def test_mschapv2_still_served(self):
        reply = yield self.radclient("auth", mschapv2_attributes())
        self.assertReply(reply, "Access-Accept")


class StatusServerTests(RadclientTestCase):
    """Status-Server (RFC 5997 §3), which must carry Message-Authenticator."""

    def setUp(self) -> None:
        super().setUp()
        self.start()

    @defer.inlineCallbacks
    def test_auth_port(self):
        """On the authentication port the answer is Access-Accept."""
        reply = yield self.radclient("status", "Message-Authenticator = 0x00\n")
        self.assertReply(reply, "Access-Accept")

    @defer.inlineCallbacks
    def test_acct_port(self):
        """On the accounting port the answer is Accounting-Response."""
        reply = yield self.radclient(
            "status", "Message-Authenticator = 0x00\n", port=self.acct_port
        )
        self.assertReply(reply, "Accounting-Response")

    @defer.inlineCallbacks
    def test_without_message_authenticator(self):
        """RFC 5997 §3: Status-Server without Message-Authenticator is discarded."""
        reply = yield self.radclient("status", 'NAS-Identifier = "nas1"\n', options=FAST)
        self.assertNoReply(reply)


class AccountingTests(RadclientTestCase):
    """Accounting-Request (RFC 2866 §4.1): stored, then acknowledged (§2, §4.2)."""

    def setUp(self) -> None:
        super().setUp()
        self.start()

    def records(self) -> list[dict[str, object]]:
        lines = (self.state / "accounting.log").read_text().splitlines()
        return [json.loads(line) for line in lines]

    @defer.inlineCallbacks
    def test_start_stop(self):
        """A session's Start and Stop each get Accounting-Response and one JSON line."""
        session = 'User-Name = "alice"\nAcct-Session-Id = "4D2C-0001"\nNAS-IP-Address = 127.0.0.1\n'
        start = yield self.radclient(
            "acct", session + "Acct-Status-Type = Start\nFramed-IP-Address = 10.0.0.5\n"
        )
        self.assertReply(start, "Accounting-Response")
        stop = yield self.radclient(
            "acct",
            session + "Acct-Status-Type = Stop\n"
            "Acct-Session-Time = 3600\n"
            "Acct-Input-Octets = 12345\n"
            "Acct-Output-Octets = 67890\n"
            "Acct-Input-Gigawords = 1\n"
            "Acct-Terminate-Cause = User-Request\n"
            'Event-Timestamp = "Jan  1 2024 00:00:00 UTC"\n',
        )
        self.assertReply(stop, "Accounting-Response")
        first, second = self.records()
        for record, reply in ((first, start), (second, stop)):
            self.assertEqual(record["client"], "loopback")
            self.assertEqual(record["peer"], "127.0.0.1")
            self.assertEqual(record["id"], reply.request_id)
            self.assertNotIn("Message-Authenticator", record["attributes"])
        self.assertEqual(
            first["attributes"],
            {
                "User-Name": ["alice"],
                "Acct-Session-Id": ["4D2C-0001"],
                "NAS-IP-Address": ["127.0.0.1"],
                "Acct-Status-Type": ["Start"],
                "Framed-IP-Address": ["10.0.0.5"],
            },
        )
        self.assertEqual(
            second["attributes"],
            {
                "User-Name": ["alice"],
                "Acct-Session-Id": ["4D2C-0001"],
                "NAS-IP-Address": ["127.0.0.1"],
                "Acct-Status-Type": ["Stop"],
                "Acct-Session-Time": [3600],
                "Acct-Input-Octets": [12345],
                "Acct-Output-Octets": [67890],
                "Acct-Input-Gigawords": [1],
                "Acct-Terminate-Cause": ["User-Request"],
                "Event-Timestamp": [1704067200],  # RFC 2869 §5.3: seconds since 1970 UTC
            },
        )

    @defer.inlineCallbacks
    def test_reopened_on_reload(self):
        """logrotate renames the file and sends SIGHUP (reload): records before stay in the
        renamed file, records after go to a new file under the configured name."""
        session = 'User-Name = "alice"\nAcct-Session-Id = "R-1"\nAcct-Status-Type = '
        first = yield self.radclient("acct", session + "Start\n")
        self.assertReply(first, "Accounting-Response")
        log = self.state / "accounting.log"
        log.rename(self.state / "accounting.log.1")
        self.daemon.reload()
        second = yield self.radclient("acct", session + "Stop\n")
        self.assertReply(second, "Accounting-Response")
        rotated = (self.state / "accounting.log.1").read_text().splitlines()
        self.assertEqual([json.loads(line)["id"] for line in rotated], [first.request_id])
        (record,) = self.records()
        self.assertEqual(record["id"], second.request_id)
        self.assertEqual(record["attributes"]["Acct-Status-Type"], ["Stop"])

    @defer.inlineCallbacks
    def test_wrong_secret(self):
        """RFC 2866 §3: a Request Authenticator made with another secret is not valid;
        the request is dropped and nothing is recorded."""
        reply = yield self.radclient(
            "acct", 'User-Name = "alice"\nAcct-Status-Type = Start\n', secret="other", options=FAST
        )
        self.assertNoReply(reply)
        self.assertEqual(self.records(), [])


class ClientCheckTests(RadclientTestCase):
    """Who may talk to the server (RFC 2865 §3) and how a request proves it."""

    PAP = 'User-Name = "alice"\nUser-Password = "wonderland"\n'
    SIGNED_PAP = PAP + "Message-Authenticator = 0x00\n"

    @defer.inlineCallbacks
    def test_unknown_client(self):
        """RFC 2865 §3: a request from an address with no shared secret is silently
        discarded; here the only client is 127.0.0.2 and radclient sends from 127.0.0.1."""
        self.start(f'[[radius.clients]]\naddress = "127.0.0.2"\nsecret = "{SECRET}"\n')
        reply = yield self.radclient("auth", self.SIGNED_PAP, options=FAST)
        self.assertNoReply(reply)

    @defer.inlineCallbacks
    def test_wrong_secret(self):
        """RFC 3579 §3.2: an invalid Message-Authenticator (here: another secret) means
        the packet is silently discarded."""
        self.start()
        reply = yield self.radclient("auth", self.SIGNED_PAP, secret="not-the-secret", options=FAST)
        self.assertNoReply(reply)

    @defer.inlineCallbacks
    def test_require_message_authenticator(self):
        """A client marked require_message_authenticator: an Access-Request without
        Message-Authenticator is silently discarded (as RFC 3579 §3.2 prescribes for
        EAP), the same request signed is answered."""
        self.start(
            '[[radius.clients]]\nname = "strict"\naddress = "127.0.0.1"\n'
            f'secret = "{SECRET}"\nrequire_message_authenticator = true\n'
        )
        unsigned = yield self.radclient("auth", self.PAP, options=FAST)
        self.assertNoReply(unsigned)
        signed = yield self.radclient("auth", self.SIGNED_PAP)
        self.assertReply(signed, "Access-Accept")


class ParserTests(unittest.TestCase):
    """The radclient trace reader itself, on recorded output."""

    def test_reply(self):
        trace = (
            "Sent Access-Request Id 7 from 0.0.0.0:1 to 127.0.0.1:2 length 45\n"
            '\tUser-Name = "alice"\n'
            "Received Access-Reject Id 7 from 127.0.0.1:2 to 127.0.0.1:1 length 61\n"
            "\tMessage-Authenticator = 0x92e1cafc80a9f37115f5fbf5ac1584c9\n"
            '\tReply-Message = "a \\"quoted\\" \\\\ word"\n'
            '\tMS-CHAP-Error = "\\007E=691 R=0"\n'
            "(0) -: Expected Access-Accept got Access-Reject\n"
        )
        reply = parse_radclient(trace, 1)
        self.assertEqual((reply.code, reply.request_id), ("Access-Reject", 7))
        self.assertEqual(
            reply.attributes,
            [
                ("Message-Authenticator", "0x92e1cafc80a9f37115f5fbf5ac1584c9"),
                ("Reply-Message", 'a "quoted" \\ word'),
                ("MS-CHAP-Error", "\x07E=691 R=0"),
            ],
        )

    def test_no_reply(self):
        trace = (
            "Sent Access-Request Id 9 from 0.0.0.0:1 to 127.0.0.1:2 length 45\n"
            '\tUser-Name = "alice"\n'
            "(0) No reply from server for ID 9 socket 3\n"
        )
        reply = parse_radclient(trace, 1)
        self.assertEqual((reply.code, reply.request_id, reply.attributes), (None, 9, []))

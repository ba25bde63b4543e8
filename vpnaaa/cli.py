"""The `vpnaaa` command: users, the demo set-up and configuration checks."""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import http.client
import os
import secrets
import socket
import sys
import urllib.parse
from collections.abc import Collection
from pathlib import Path

from vpnaaa import config as configuration
from vpnaaa import pki, private
from vpnaaa.authorization import Authorization
from vpnaaa.ike.proposal import PolicyError
from vpnaaa.users import User, UserStoreError, locked, read_users, same_user, write_users

DEMO_USER = "demo"
DEMO_CREDENTIALS = "demo-credentials.txt"


def _read_password(args: argparse.Namespace, what: str = "password") -> str:
    """A secret from stdin (``--password-stdin``) or typed twice; never echoed or logged."""
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"{what.capitalize()}: ")
        if getpass.getpass("Again: ") != password:
            raise SystemExit(f"vpnaaa: {what}s differ")
    if not password:
        raise SystemExit(f"vpnaaa: empty {what}")
    return password


def _users_file(args: argparse.Namespace) -> tuple[Path, frozenset[int]]:
    """The user file and the owners it may have (root, us, the daemon user)."""
    cfg = configuration.load(args.config, args.state_dir)
    return cfg.users.file, private.trusted_owners(cfg.daemon.user)


def _existing(path: Path, owners: Collection[int]) -> dict[str, User]:
    return read_users(path, owners) if os.path.lexists(path) else {}


def user_add(args: argparse.Namespace) -> str:
    path, owners = _users_file(args)
    password = _read_password(args)
    with locked(path):
        users = _existing(path, owners)
        if args.name in users:
            raise SystemExit(f"vpnaaa: user {args.name!r} exists; use `vpnaaa user passwd`")
        twin = same_user(users, args.name)
        if twin is not None:
            raise SystemExit(f"vpnaaa: user {twin!r} exists (names are one user in any case)")
        users[args.name] = User.create(
            args.name, password, mschap=not args.no_mschap, chap=args.chap
        )
        write_users(path, users)
    return f"added {args.name} ({', '.join(users[args.name].methods())}) to {path}"


def user_passwd(args: argparse.Namespace) -> str:
    path, owners = _users_file(args)
    password = _read_password(args)
    with locked(path):
        users = _existing(path, owners)
        old = users.get(args.name)
        if old is None:
            raise SystemExit(f"vpnaaa: no user {args.name!r} in {path}")
        users[args.name] = User.create(
            args.name,
            password,
            mschap=old.nt_hash is not None,
            chap=old.chap_password is not None,
        )
        write_users(path, users)
    return f"changed the password of {args.name} in {path}"


def user_grant(args: argparse.Namespace) -> str:
    """Set what a user's sessions are granted (as a RADIUS server's Access-Accept would):
    a fixed virtual IP, a pool, a session timeout, an accounting interval, Class values."""
    path, owners = _users_file(args)
    with locked(path):
        users = _existing(path, owners)
        user = users.get(args.name)
        if user is None:
            raise SystemExit(f"vpnaaa: no user {args.name!r} in {path}")
        record = {} if args.clear else user.authorization.to_json()
        given = {
            "framed_ip": args.framed_ip,
            "framed_pool": args.pool,
            "session_timeout": args.session_timeout,
            "interim_interval": args.interim,
            "class": args.classes,
        }
        record.update({k: v for k, v in given.items() if v is not None})
        try:
            granted = Authorization.from_json(record)
        except ValueError as e:
            raise SystemExit(f"vpnaaa: {e}") from None
        users[args.name] = dataclasses.replace(user, authorization=granted)
        write_users(path, users)
    shown = ", ".join(f"{k} {v}" for k, v in granted.to_json().items()) or "nothing"
    return f"{args.name} is granted {shown} (in {path}; the daemon reads it on SIGHUP)"


def user_del(args: argparse.Namespace) -> str:
    path, owners = _users_file(args)
    with locked(path):
        users = _existing(path, owners)
        if users.pop(args.name, None) is None:
            raise SystemExit(f"vpnaaa: no user {args.name!r} in {path}")
        write_users(path, users)
    return f"deleted {args.name} from {path}"


def user_list(args: argparse.Namespace) -> str:
    users = _existing(*_users_file(args))
    return "\n".join(f"{u.name}\t{','.join(u.methods())}" for u in users.values())


def _create_private(path: Path, content: str) -> bool:
    """Write a new 0600 file, owned as its directory; never overwrite one that exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    private.owned_as(fd, path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(content)
    return True


def _pki_dirs(args: argparse.Namespace) -> tuple[Path, Path]:
    """(CA directory, server directory): where [eap.tls] certificate points, and its ca/."""
    if args.config:
        server_dir = configuration.load(args.config, args.state_dir).eap.tls.certificate.parent
    else:
        server_dir = Path(args.state_dir or configuration.DEFAULT_STATE_DIR) / "pki"
    return server_dir / "ca", server_dir


def pki_init(args: argparse.Namespace) -> str:
    ca_dir, _ = _pki_dirs(args)
    files = pki.init_ca(ca_dir, args.cn)
    return (
        f"CA created: {files.cert} (key {files.key}, CRL {ca_dir / 'crl.pem'}); "
        f"give {files.cert} to clients"
    )


def pki_issue(args: argparse.Namespace) -> str:
    ca_dir, server_dir = _pki_dirs(args)
    files = pki.issue_server(
        ca_dir, server_dir, args.name, args.alt, key_type=args.key_type, force=args.force
    )
    return f"issued {files.cert} for {', '.join([args.name, *args.alt])} (chain {files.chain})"


def pki_csr(args: argparse.Namespace) -> str:
    _, server_dir = _pki_dirs(args)
    path = pki.make_csr(server_dir, args.name, args.alt, key_type=args.key_type, force=args.force)
    return f"CSR written to {path}; have it signed, then run `vpnaaa pki import`"


def pki_issue_client(args: argparse.Namespace) -> str:
    """A user or machine certificate from the private CA; with --p12, only the PKCS#12 (the
    passphrase from --passphrase-file, stdin or the terminal, never the command line) holds
    the key."""
    ca_dir, server_dir = _pki_dirs(args)
    passphrase = None
    if not args.p12 and (args.passphrase_file is not None or args.password_stdin):
        raise SystemExit("vpnaaa: a passphrase is for the PKCS#12: add --p12")
    if args.passphrase_file is not None:
        try:
            secret = private.read(args.passphrase_file, private.trusted_owners())
        except private.PrivateFileError as e:
            raise SystemExit(f"vpnaaa: {e}") from None
        passphrase = secret.split(b"\n", 1)[0].rstrip(b"\r")
    elif args.p12:
        passphrase = _read_password(args, "passphrase").encode()
    files = pki.issue_client(
        ca_dir,
        args.out or server_dir / "clients",
        args.name,
        machine=args.machine,
        days=args.days,
        key_type=args.key_type,
        p12_passphrase=passphrase,
        p12_cipher=args.p12_cipher,
        force=args.force,
    )
    serial = pki.serial_hex(files.serial)
    holder = f"PKCS#12 {files.p12}" if files.p12 else f"key {files.key}"
    return (
        f"issued {files.cert} ({holder}), serial {serial}; clients trust {ca_dir / 'ca.pem'}; "
        f"`vpnaaa pki revoke {serial}` withdraws it"
    )


def pki_revoke(args: argparse.Namespace) -> str:
    ca_dir, _ = _pki_dirs(args)
    entry, crl = pki.revoke(
        ca_dir, pki.parse_serial(args.serial), args.reason, unlisted=args.unlisted
    )
    return (
        f"revoked {pki.serial_hex(entry.serial)} ({entry.subject or 'not in the index'}); "
        + _crl_summary(crl)
    )


def pki_crl(args: argparse.Namespace) -> str:
    ca_dir, _ = _pki_dirs(args)
    return _crl_summary(pki.write_crl(ca_dir))


def _crl_summary(crl: pki.CrlInfo) -> str:
    return (
        f"{crl.path}: CRL number {crl.number}, {crl.revoked} revoked, next update "
        f"{crl.next_update:%Y-%m-%d %H:%M} UTC; run `vpnaaa pki crl` before then (daily timer)"
    )


def pki_import(args: argparse.Namespace) -> str:
    _, server_dir = _pki_dirs(args)
    result = pki.import_certificate(
        server_dir / "server.key", args.certificate, args.chain, server_dir, force=True
    )
    lines = [f"installed {result.files.cert} and {result.files.chain}"]
    lines += [f"warning: {w}" for w in result.warnings]
    return "\n".join(lines)


def demo(args: argparse.Namespace) -> str:
    """Create what the embedded defaults need, keeping anything that exists."""
    state = Path(args.state_dir or configuration.DEFAULT_STATE_DIR)
    state.mkdir(parents=True, exist_ok=True)
    os.chmod(state, 0o700)
    ca_dir, server_dir = _pki_dirs(args)
    if not (ca_dir / "ca.pem").exists():
        pki.init_ca(ca_dir)
    if not (server_dir / "server.pem").exists():
        pki.issue_server(ca_dir, server_dir, socket.gethostname(), ["127.0.0.1"])
    secret_path = state / configuration.DEMO_SECRET_FILE
    _create_private(secret_path, secrets.token_urlsafe(18) + "\n")
    users_path = state / configuration.UsersConfig.file
    credentials = state / DEMO_CREDENTIALS
    with locked(users_path):
        users = _existing(users_path, private.trusted_owners(configuration.DEFAULT_USER))
        create = DEMO_USER not in users and not credentials.exists()
        if create:
            password = secrets.token_urlsafe(12)
            users[DEMO_USER] = User.create(DEMO_USER, password, chap=True)
            write_users(users_path, users)
    if create:
        secret = secret_path.read_text().strip()
        _create_private(
            credentials,
            f"RADIUS client 127.0.0.1, shared secret: {secret}\n"
            f"user: {DEMO_USER}\npassword: {password}\n"
            f"try: echo 'User-Name={DEMO_USER},User-Password={password}' | "
            f"radclient -x 127.0.0.1 auth {secret}\n",
        )
    return f"demo credentials: {credentials}; PEAP clients trust {ca_dir / 'ca.pem'}"


def check_config(args: argparse.Namespace) -> str:
    """Everything start-up checks (users, certificates, policies) except binding ports."""
    from vpnaaa.service import VpnaaaService

    cfg = configuration.load(args.path, args.state_dir)
    daemon = VpnaaaService(cfg)
    services = [name for name in ("radius", "ike") if getattr(daemon, name) is not None]
    return (
        f"{cfg.source}: OK ({', '.join(services) or 'no services'} enabled, "
        f"{len(daemon.users)} users in {cfg.users.file})"
    )


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over the admin API's UNIX socket."""

    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=10)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(str(self.path))


def show_sessions(args: argparse.Namespace) -> str:
    """Ask the running daemon's admin API for its live sessions."""
    return _admin(args, "GET", "/sessions" if args.json else "/sessions.txt")


def disconnect(args: argparse.Namespace) -> str:
    """End a user's sessions, or one session by its id, in the running daemon."""
    return _admin(args, "POST", "/disconnect?" + urllib.parse.urlencode({"who": args.who}))


def keylog(args: argparse.Namespace) -> str:
    """Switch the running daemon's keys for Wireshark on or off, or say whether they are."""
    if args.state is None:
        return _admin(args, "GET", "/keylog")
    return _admin(args, "POST", "/keylog?" + urllib.parse.urlencode({"state": args.state}))


def deny(args: argparse.Namespace) -> str:
    """Refuse a certificate serial in the running daemon (or allow it again, or list)."""
    if args.serial is None:
        if args.remove:
            raise SystemExit("vpnaaa: name the serial to allow again")
        return _admin(args, "GET", "/deny") or "no serial is denied"
    query = {"serial": args.serial} | ({"remove": "1"} if args.remove else {})
    return _admin(args, "POST", "/deny?" + urllib.parse.urlencode(query))


def _admin(args: argparse.Namespace, method: str, target: str) -> str:
    """One request to the running daemon's admin API: on its UNIX socket, or on TCP with
    the bearer token when ``[admin]`` has no socket; the body, or exit with the reason."""
    admin = configuration.load(args.config, args.state_dir).admin
    if not admin.enabled:
        raise SystemExit("vpnaaa: the admin API is disabled ([admin] enabled = false)")
    headers = {}
    connection: http.client.HTTPConnection
    if admin.socket is not None:
        where = str(admin.socket)
        connection = _UnixConnection(admin.socket)
    else:
        assert admin.listen is not None and admin.token is not None
        where = f"{admin.listen}:{admin.port}"
        connection = http.client.HTTPConnection(admin.listen, admin.port, timeout=10)
        headers["Authorization"] = f"Bearer {admin.token.decode()}"
    try:
        connection.request(method, target, headers=headers)
        response = connection.getresponse()
        body = response.read().decode()
    except OSError as e:
        raise SystemExit(f"vpnaaa: cannot reach the daemon at {where}: {e}") from None
    finally:
        connection.close()
    if response.status != 200:
        raise SystemExit(f"vpnaaa: the daemon at {where} answered {response.status}: {body}")
    return body.rstrip("\n")


def admin_token(args: argparse.Namespace) -> str:
    """Create ``[admin] token_file`` (mode 0600) for the admin API on TCP."""
    state = Path(args.state_dir or configuration.DEFAULT_STATE_DIR)
    if args.config:
        import tomllib

        with open(args.config, "rb") as f:
            raw = tomllib.load(f)
        state = Path(args.state_dir or raw.get("general", {}).get("state_dir", state))
        name = raw.get("admin", {}).get("token_file", "admin-token")
    else:
        name = "admin-token"
    path = state / name
    if not _create_private(path, secrets.token_urlsafe(32) + "\n"):
        raise SystemExit(f"vpnaaa: {path} exists; remove it first to make a new token")
    return f"admin API token written to {path}; clients send it as 'Authorization: Bearer ...'"


def _key_type_argument(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--key-type",
        choices=pki.SERVER_KEY_TYPES,
        default="rsa3072",
        help="the new key (default rsa3072)",
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vpnaaa", description=__doc__)
    p.add_argument("--config", "-c", help="TOML configuration (default: embedded defaults)")
    p.add_argument("--state-dir", "-s", help="state directory, overriding general.state_dir")
    sub = p.add_subparsers(dest="command", required=True)

    user = sub.add_parser("user", help="manage the local user store").add_subparsers(
        dest="action", required=True
    )
    add = user.add_parser("add", help="add a user")
    add.add_argument("name")
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    add.add_argument(
        "--no-mschap",
        action="store_true",
        help="keep no NT hash: the user cannot use MS-CHAP or EAP-MSCHAPv2",
    )
    add.add_argument(
        "--chap",
        action="store_true",
        help="keep the cleartext password so CHAP works (reversible, opt-in)",
    )
    add.set_defaults(func=user_add)
    passwd = user.add_parser("passwd", help="change a user's password")
    passwd.add_argument("name")
    passwd.add_argument("--password-stdin", action="store_true")
    passwd.set_defaults(func=user_passwd)
    grant = user.add_parser(
        "grant", help="what a user's VPN sessions get (address, pool, timeouts, Class)"
    )
    grant.add_argument("name")
    grant.add_argument("--framed-ip", help="this virtual IP instead of one from the pool")
    grant.add_argument("--pool", help="the pool of the profile with this name")
    grant.add_argument("--session-timeout", type=int, help="seconds a session may last")
    grant.add_argument("--interim", type=int, help="seconds between accounting updates")
    grant.add_argument(
        "--class", dest="classes", action="append", help="a Class for accounting to echo"
    )
    grant.add_argument("--clear", action="store_true", help="forget what was granted before")
    grant.set_defaults(func=user_grant)
    delete = user.add_parser("del", help="delete a user")
    delete.add_argument("name")
    delete.set_defaults(func=user_del)
    user.add_parser("list", help="list users and their methods").set_defaults(func=user_list)

    certs = sub.add_parser("pki", help="certificates for PEAP and IKEv2").add_subparsers(
        dest="action", required=True
    )
    init = certs.add_parser("init", help="create a private CA in state_dir/pki/ca")
    init.add_argument("--cn", default="vpnaaa demo CA", help="the CA's common name")
    init.set_defaults(func=pki_init)
    for verb, func, text in (
        ("issue", pki_issue, "issue the server certificate from the private CA"),
        ("csr", pki_csr, "make a key and a CSR for an external CA"),
    ):
        command = certs.add_parser(verb, help=text)
        command.add_argument("name", help="DNS name or IP address clients connect to")
        command.add_argument("--alt", action="append", default=[], help="another name or IP")
        _key_type_argument(command)
        command.add_argument("--force", action="store_true", help="replace existing files")
        command.set_defaults(func=func)
    client = certs.add_parser(
        "issue-client",
        help="issue a user or machine certificate (IKEv2 certificate auth, EAP-TLS)",
        description="A user certificate (CN NAME; for user@domain also an e-mail and a "
        "Windows UPN subjectAltName) or, with --machine, a device certificate (the FQDN as CN "
        "and dNSName, for the Always On VPN device tunnel); EKU clientAuth + IKE intermediate. "
        "Written to state_dir/pki/clients/NAME.pem with NAME.key, or NAME.p12 with --p12.",
    )
    client.add_argument("name", help="user, user@domain, or with --machine the machine FQDN")
    client.add_argument("--machine", action="store_true", help="a device certificate")
    client.add_argument(
        "--p12",
        action="store_true",
        help="write NAME.p12 (key, certificate, CA) instead of NAME.key",
    )
    client.add_argument(
        "--p12-cipher",
        choices=("3des", "aes256"),
        default="3des",
        help="3des (default): what Windows, macOS, iOS and Android all import; aes256: "
        "Windows 10/11, current Android and Linux only (Apple devices refuse it)",
    )
    secret = client.add_mutually_exclusive_group()
    secret.add_argument(
        "--passphrase-file", type=Path, help="the PKCS#12 passphrase: first line of a 0600 file"
    )
    secret.add_argument(
        "--passphrase-stdin",
        dest="password_stdin",
        action="store_true",
        help="read the PKCS#12 passphrase from stdin (default: prompt twice)",
    )
    _key_type_argument(client)
    client.add_argument("--days", type=int, default=365, help="validity (default 365)")
    client.add_argument("--out", type=Path, help="directory (default state_dir/pki/clients)")
    client.add_argument("--force", action="store_true", help="replace existing files")
    client.set_defaults(func=pki_issue_client)
    revoked = certs.add_parser(
        "revoke",
        help="revoke a certificate of the private CA and re-sign ca/crl.pem",
        description="Records the revocation in ca/index.json and re-signs ca/crl.pem (CRL "
        f"number + 1, valid {pki.CRL_DAYS} days), which the daemon reloads.",
    )
    revoked.add_argument("serial", help="hex, as issue-client or `openssl x509 -serial` print it")
    revoked.add_argument("--reason", choices=tuple(pki.REASONS), help="RFC 5280 reason code")
    revoked.add_argument(
        "--unlisted",
        action="store_true",
        help="revoke a serial ca/index.json does not list (issued before it existed)",
    )
    revoked.set_defaults(func=pki_revoke)
    certs.add_parser(
        "crl", help=f"re-sign ca/crl.pem (valid {pki.CRL_DAYS} days: run daily from a timer)"
    ).set_defaults(func=pki_crl)
    imported = certs.add_parser("import", help="install the certificate an external CA issued")
    imported.add_argument("certificate", type=Path)
    imported.add_argument("chain", type=Path, nargs="*", help="CA certificates, nearest first")
    imported.set_defaults(func=pki_import)

    shown = sub.add_parser("sessions", help="live VPN sessions of the running daemon")
    shown.add_argument("--json", action="store_true", help="machine-readable output")
    shown.set_defaults(func=show_sessions)
    ended = sub.add_parser(
        "disconnect", help="end a user's sessions (or one, by session id) with a DELETE"
    )
    ended.add_argument("who", help="a user name, or a session id as `vpnaaa sessions` shows")
    ended.set_defaults(func=disconnect)
    denied = sub.add_parser(
        "deny",
        help="refuse a client certificate by serial from the next authentication on "
        "(the daemon's deny list) and end the live IKE sessions authenticated with it",
    )
    denied.add_argument("serial", nargs="?", help="hex, as `openssl x509 -serial` shows it")
    denied.add_argument("--remove", action="store_true", help="allow the serial again")
    denied.set_defaults(func=deny)
    keys = sub.add_parser(
        "keylog", help="log keys for Wireshark (IKE, ESP, PEAP TLS): anyone with them reads it"
    )
    keys.add_argument("state", nargs="?", choices=("on", "off"), help="without: show the state")
    keys.set_defaults(func=keylog)
    sub.add_parser(
        "admin-token", help="create the bearer token the admin API needs on TCP"
    ).set_defaults(func=admin_token)

    sub.add_parser(
        "demo", help="create the demo secret, user and certificates for the embedded defaults"
    ).set_defaults(func=demo)
    check = sub.add_parser("check-config", help="validate a configuration without starting")
    check.add_argument("path", nargs="?", help="the file (default: the embedded defaults)")
    check.set_defaults(func=check_config)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        output = args.func(args)
    except (configuration.ConfigError, UserStoreError, pki.PkiError, PolicyError) as e:
        print(f"vpnaaa: {e}", file=sys.stderr)
        return 1
    if output:
        print(output)
    if args.command == "user" and args.action != "list":
        print("a running daemon picks the change up on SIGHUP (systemctl reload vpnaaa)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

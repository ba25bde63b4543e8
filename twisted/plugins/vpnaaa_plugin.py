"""twistd plugin: `twistd -n vpnaaa [--config PATH] [--state-dir DIR]`.

Started as root, the daemon binds its ports and opens its netlink sockets, then runs as
``[daemon] user`` (default ``vpnaaa``) with CAP_NET_ADMIN only: leave twistd's own --uid and
--gid unset (they would drop every capability). A --pidfile or --logfile must then be in a
directory that user can write, or twistd cannot remove or rotate it later.
"""

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer


class Options(usage.Options):
    optParameters = [  # noqa: RUF012 (Twisted API)
        ["config", "c", None, "TOML configuration file (default: the embedded defaults)"],
        ["state-dir", "s", None, "state directory, overriding general.state_dir"],
    ]


@implementer(IServiceMaker, IPlugin)
class VpnaaaServiceMaker:
    tapname = "vpnaaa"
    description = "IKEv2 remote-access VPN head-end and RADIUS/EAP AAA server"
    options = Options

    def makeService(self, options):
        from vpnaaa.config import ConfigError, load
        from vpnaaa.pki import PkiError
        from vpnaaa.service import make_service
        from vpnaaa.users import UserStoreError

        try:
            daemon = make_service(load(options["config"], options["state-dir"]))
        except (ConfigError, UserStoreError, PkiError) as e:
            raise SystemExit(f"vpnaaa: {e}") from None
        daemon.install_sighup()
        daemon.exit_on_failure = True
        daemon.drop_privileges = True  # [daemon] user, once the ports are bound
        return daemon


serviceMaker = VpnaaaServiceMaker()

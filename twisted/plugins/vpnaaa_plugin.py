"""twistd plugin: `twistd -n vpnaaa [--config PATH] [--state-dir DIR]`."""

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
        return daemon


serviceMaker = VpnaaaServiceMaker()

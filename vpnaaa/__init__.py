"""vpnaaa: an IKEv2 remote-access VPN head-end and RADIUS/EAP AAA server in one Twisted process."""

__version__ = "0.1.0"

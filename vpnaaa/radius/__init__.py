"""RADIUS: the server for NAS devices (RFC 2865/2866/3579/5997) and its wire helpers."""

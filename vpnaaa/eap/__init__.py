"""EAP (RFC 3748): the authenticator, its methods, and the front-end adapters."""

"""IKEv2 (RFC 7296): wire codec, fragmentation and the responder for remote-access clients."""

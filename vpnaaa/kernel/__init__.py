"""Kernel datapath: the CHILD_SA installer interface, and installers."""

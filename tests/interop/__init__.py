"""Tests that drive vpnaaa with real third-party peers (Debian packages)."""

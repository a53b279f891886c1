"""Packaged default configuration (stanch.toml)."""

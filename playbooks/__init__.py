"""Packaged playbooks (YAML data); loaded with importlib.resources."""

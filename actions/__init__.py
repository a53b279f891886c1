"""Remediation actions, one module per AWS service, registered by name in `actions.registry`."""

"""stanch: automated containment playbooks for AWS incidents."""

__version__ = "0.1.0"

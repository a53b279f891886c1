"""Actions register by name. The engine looks them up here; tests may build their own registry."""

from __future__ import annotations

import importlib
from typing import Any

from actions.base import Action

BUILTIN_MODULES = ("actions.scope", "actions.iam", "actions.iam_undo", "actions.ecs", "actions.evidence",
                   "actions.rollback", "actions.triage", "actions.iam_persistence", "actions.lambda_",
                   "actions.ec2_exposure", "actions.rds", "actions.s3", "actions.cloudtrail", "actions.guardduty",
                   "actions.awsconfig", "actions.autoscaling", "actions.events", "actions.ec2",
                   "actions.ec2_spot")


class Registry:
    def __init__(self) -> None:
        self._actions: dict[str, type[Action[Any]]] = {}

    def register(self, cls: type[Action[Any]]) -> type[Action[Any]]:
        if cls.name in self._actions and self._actions[cls.name] is not cls:
            raise ValueError(f"action {cls.name!r} is registered twice")
        self._actions[cls.name] = cls
        return cls

    def get(self, name: str) -> type[Action[Any]] | None:
        return self._actions.get(name)

    def names(self) -> list[str]:
        return sorted(self._actions)

    def all(self) -> list[type[Action[Any]]]:
        return [self._actions[n] for n in self.names()]


REGISTRY = Registry()


def register(cls: type[Action[Any]]) -> type[Action[Any]]:
    """Class decorator: add an action to the built-in registry."""
    return REGISTRY.register(cls)


def builtin_registry() -> Registry:
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    return REGISTRY

"""Plugins: how memory, RPM and VAS hook into the proxy.

A plugin is built once per app (cheap, synchronous), contributes pipeline stages and admin routers, and
is started and closed with the app. Readiness feeds `/readyz`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from fastapi import APIRouter

from proxy.pipeline.stage import Stage

if TYPE_CHECKING:
    from proxy.services import Services


@runtime_checkable
class Plugin(Protocol):
    name: str

    def stages(self) -> list[Stage]: ...

    def routers(self) -> list[APIRouter]: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def ready(self) -> tuple[bool, str]:
        """(ok, reason) for /readyz."""
        ...


# Order matters: stages run in this order before the upstream call (memory first, VAS last).
DEFAULT_PLUGINS: tuple[str, ...] = (
    "proxy.stages.memory_plugin:build",
    "proxy.stages.rpm_plugin:build",
    "proxy.stages.vas_plugin:build",
)


def load_plugins(services: Services, specs: tuple[str, ...] = DEFAULT_PLUGINS) -> list[Plugin]:
    plugins: list[Plugin] = []
    for spec in specs:
        module_name, _, attr = spec.partition(":")
        factory = getattr(importlib.import_module(module_name), attr)
        plugin = factory(services)
        if plugin is not None:
            plugins.append(plugin)
    return plugins

"""rpm plugin (placeholder until the rpm stage lands): contributes no stage yet."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxy.plugins import Plugin
    from proxy.services import Services


def build(services: Services) -> Plugin | None:
    return None

"""RPM settings (composed into Rapport's one settings object by the proxy)."""

from __future__ import annotations

from pydantic import BaseModel


class RPMSettings(BaseModel):
    enabled_by_default: bool = False

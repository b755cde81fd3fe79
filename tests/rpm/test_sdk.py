"""The Python SDK's RPM and VAS namespaces against a real Rapport (scripted upstream)."""

from __future__ import annotations

import pytest

from rapport import AsyncRapport, Rapport
from rapport._base import RapportError


def test_sdk_rpm_history_and_vas_weights(make_rapport):
    rapport = make_rapport()
    with Rapport(rapport.url, api_key=rapport.api_key, admin_key=rapport.admin_key, tenant="tenant-a") as client:
        imported = client.rpm.import_history(
            "dana",
            [{"input": "Rate: Cove. Genre: seafood.", "response": "5"}, {"input": "Rate: Ash. Genre: bbq.", "response": "2"}],
            build=False,
        )
        assert imported["imported"] == 2
        history = client.rpm.get("dana", "rpm/history")
        assert sorted(e["response"] for e in history["data"]) == ["2", "5"]
        # Another tenant sees nothing of dana's history.
        other = client.rpm.get("dana", "rpm/history", tenant="tenant-b")
        assert other["data"] == []

        with pytest.raises(RapportError) as info:
            client.vas.set("dana", {"not-configured": 1.0})
        assert info.value.status == 400
        profile = client.vas.set("dana", {}, beta=4.0)
        assert profile["beta"] == 4.0
        assert client.vas.get("dana")["beta"] == 4.0
        assert client.vas.delete("dana")["deleted"] is True


@pytest.mark.asyncio
async def test_async_sdk_rpm_summary(make_rapport):
    rapport = make_rapport()
    async with AsyncRapport(rapport.url, api_key=rapport.api_key, admin_key=rapport.admin_key, tenant="tenant-a") as client:
        await client.rpm.import_history("erin", [{"input": "Rate: Fig. Genre: vegan.", "response": "4"}], build=False)
        summary = await client.rpm.get("erin")
        assert summary["entries"]

"""VAS's part of the user-data registry (rapport/core/userdata.py): the user's profile row."""

from __future__ import annotations

from rapport.core.userdata import TablesPart
from reasoning.vas.store import ProfileStore
from reasoning.vas.store_schema import vas_profiles


def vas_part(store: ProfileStore) -> TablesPart:
    # One row per user, keyed by it: an import replaces the user's profile.
    return TablesPart("vas", store.db, {"profiles": vas_profiles})

"""VAS admin routes: value models and each user's value-model weights, behind the admin key."""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Depends, Path, Query

from proxy.auth.deps import require_admin
from proxy.entrypoints.admin.vas.protocol import (
    Deleted,
    ValueModelInfo,
    ValueModelList,
    VASProfile,
    VASProfileIn,
)
from proxy.errors import InvalidRequest, NotFound

if TYPE_CHECKING:
    from proxy.stages.vas_plugin import VASPlugin

Tenant = Annotated[str, Query(min_length=1, max_length=200, description="The user's tenant.")]
User = Annotated[str, Path(min_length=1, max_length=256)]


def build_router(plugin: VASPlugin) -> APIRouter:
    engine = plugin.engine
    router = APIRouter(prefix="/admin/vas", tags=["admin: vas"], dependencies=[Depends(require_admin)])

    @router.get("/value-models", response_model=ValueModelList, summary="Configured value models")
    async def value_models() -> ValueModelList:
        return ValueModelList(
            data=[
                ValueModelInfo(name=e.name, backend=e.backend, loaded=e.name in engine.backends,
                               error=engine.load_errors.get(e.name))
                for e in engine.settings.value_models
            ]
        )

    @router.get("/users/{user}", response_model=VASProfile, summary="A user's value-model weights")
    async def get_profile(user: User, tenant: Tenant = "default") -> VASProfile:
        profile = await asyncio.to_thread(engine.store.get, tenant, user)
        if profile is None:
            raise NotFound(f"No VAS profile for user {user!r} in tenant {tenant!r}.", param="user")
        return VASProfile(tenant=tenant, user=user, weights=profile.weights, beta=profile.beta,
                          updated_at=profile.updated_at)

    @router.put("/users/{user}", response_model=VASProfile, summary="Set a user's value-model weights")
    async def put_profile(body: VASProfileIn, user: User, tenant: Tenant = "default") -> VASProfile:
        known = {e.name for e in engine.settings.value_models}
        unknown = sorted(set(body.weights) - known)
        if unknown:
            raise InvalidRequest(f"Unknown value model(s): {', '.join(unknown)}", param="weights")
        if any(not math.isfinite(w) for w in body.weights.values()):
            raise InvalidRequest("Weights must be finite numbers.", param="weights")
        profile = await asyncio.to_thread(engine.store.put, tenant, user, body.weights, body.beta)
        return VASProfile(tenant=tenant, user=user, weights=profile.weights, beta=profile.beta,
                          updated_at=profile.updated_at)

    @router.delete("/users/{user}", response_model=Deleted, summary="Remove a user's value-model weights")
    async def delete_profile(user: User, tenant: Tenant = "default") -> Deleted:
        n = await asyncio.to_thread(engine.store.delete, tenant, user)
        return Deleted(tenant=tenant, user=user, deleted=n > 0)

    return router

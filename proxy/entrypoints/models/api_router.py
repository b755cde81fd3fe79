"""GET /v1/models: the configured model aliases."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from proxy.auth.deps import Principal, require_principal, services_of

router = APIRouter(tags=["openai"])


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "rapport"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


@router.get("/v1/models", response_model=ModelList)
async def list_models(request: Request, principal: Principal = Depends(require_principal)) -> ModelList:
    settings = services_of(request).settings
    return ModelList(data=[ModelCard(id=m.model_name) for m in settings.model_list])

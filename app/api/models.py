"""The models the pools serve: `/v1/models` and one model's card."""

from typing import Any

from fastapi import APIRouter

from app.api.deps import GatewayDep, scoped
from app.errors import ModelNotFound

__all__ = ["router"]

router = APIRouter()


@router.get("/v1/models", dependencies=[scoped("chat")])
async def models(gateway: GatewayDep) -> dict[str, Any]:
    return {"object": "list", "data": gateway.registry.model_cards()}


@router.get("/v1/models/{model:path}", dependencies=[scoped("chat")])
async def model(model: str, gateway: GatewayDep) -> dict[str, Any]:
    """One model's card (the SDK's `models.retrieve`); ids may hold `/` (hub ids) and `:`."""
    card = next((card for card in gateway.registry.model_cards() if card["id"] == model), None)
    if card is None:
        raise ModelNotFound(model)
    return card

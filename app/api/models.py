"""The models the pools serve: `/v1/models` and one model's card."""

from typing import Annotated, Any

from fastapi import APIRouter

from app.api.deps import GatewayDep, scoped
from app.auth import Principal
from app.errors import ModelNotFound

__all__ = ["router"]

router = APIRouter()


@router.get("/v1/models")
async def models(gateway: GatewayDep, principal: Annotated[Principal | None, scoped("chat")]) -> dict[str, Any]:
    """The base models, and the caller's own fine-tuned ones."""
    return {"object": "list", "data": gateway.visible_cards(principal)}


@router.get("/v1/models/{model:path}")
async def model(
    model: str, gateway: GatewayDep, principal: Annotated[Principal | None, scoped("chat")]
) -> dict[str, Any]:
    """One model's card (the SDK's `models.retrieve`); ids may hold `/` (hub ids) and `:`."""
    card = next((card for card in gateway.visible_cards(principal) if card["id"] == model), None)
    if card is None:
        raise ModelNotFound(model)
    return card

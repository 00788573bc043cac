"""LoRA adapters, loaded and unloaded as vLLM's `/v1/load_lora_adapter` and `/v1/unload_lora_adapter` do."""

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from engines.base import InvalidRequest
from engines.server.body import parse
from engines.server.deps import EngineDep
from protocol import LoadLoraAdapterRequest, UnloadLoraAdapterRequest

__all__ = ["router"]

router = APIRouter()


@router.post("/v1/load_lora_adapter")
async def load_lora_adapter(request: Request, engine: EngineDep) -> PlainTextResponse:
    load = await parse(request, LoadLoraAdapterRequest)
    if load.lora_name == engine.model_name:
        raise InvalidRequest(f"The lora adapter '{load.lora_name}' conflicts with a served base model.", "lora_name")
    await engine.load_adapter(load.lora_name, load.lora_path, replace=load.load_inplace)
    return PlainTextResponse(f"Success: LoRA adapter '{load.lora_name}' added successfully.")


@router.post("/v1/unload_lora_adapter")
async def unload_lora_adapter(request: Request, engine: EngineDep) -> PlainTextResponse:
    unload = await parse(request, UnloadLoraAdapterRequest)
    await engine.unload_adapter(unload.lora_name)
    return PlainTextResponse(f"Success: LoRA adapter '{unload.lora_name}' removed successfully.")

"""LoRA adapter management requests, in vLLM's shapes (`/v1/load_lora_adapter`, `/v1/unload_lora_adapter`)."""

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["LoadLoraAdapterRequest", "UnloadLoraAdapterRequest"]


class LoadLoraAdapterRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")

    lora_name: str = Field(min_length=1)
    lora_path: str = Field(min_length=1)
    load_inplace: bool = False


class UnloadLoraAdapterRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")

    lora_name: str = Field(min_length=1)

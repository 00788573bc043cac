"""OpenAI wire models shared by the gateway and the engines.

This package is a leaf: it imports nothing from the project, so every process
(gateway, engines, sync sidecar) can speak the same protocol without pulling in
each other's code.
"""

from protocol.adapters import LoadLoraAdapterRequest, UnloadLoraAdapterRequest
from protocol.chat import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    ChatMessage,
    ContentPart,
    ResponseMessage,
    StreamOptions,
)
from protocol.common import FinishReason, SamplingParams, Usage, usage_count
from protocol.completions import (
    Completion,
    CompletionChoice,
    CompletionRequest,
)
from protocol.errors import SEQUENCE_FAILED, ErrorBody, ErrorResponse, describe_validation_error, error_payload
from protocol.files import FileDeleted, FileList, FileObject
from protocol.fine_tuning import (
    FineTuningJob,
    FineTuningJobCheckpoint,
    FineTuningJobEvent,
    JobCreateRequest,
    JobError,
    JobHyperparameters,
    Page,
)
from protocol.models import ModelCard, ModelList
from protocol.sse import DONE_EVENT, SSE_HEADERS, sse_event

__all__ = [
    "FineTuningJob",
    "FineTuningJobCheckpoint",
    "FineTuningJobEvent",
    "JobCreateRequest",
    "JobError",
    "JobHyperparameters",
    "Page",
    "FileDeleted",
    "FileList",
    "FileObject",
    "DONE_EVENT",
    "ChatChoice",
    "ChatChunkChoice",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ChatDelta",
    "ChatMessage",
    "Completion",
    "CompletionChoice",
    "CompletionRequest",
    "ContentPart",
    "ErrorBody",
    "ErrorResponse",
    "FinishReason",
    "LoadLoraAdapterRequest",
    "ModelCard",
    "ModelList",
    "ResponseMessage",
    "SamplingParams",
    "StreamOptions",
    "UnloadLoraAdapterRequest",
    "Usage",
    "describe_validation_error",
    "error_payload",
    "SEQUENCE_FAILED",
    "SSE_HEADERS",
    "sse_event",
    "usage_count",
]

"""HTTP schemas for what maskserve adds to vLLM's OpenAI API: mask admin, experiments, feedback, and errors.

Client strings are checked here before anything keeps them, and quoted in messages only clipped: a 2 MB REF must not
come back in a 2 MB error, nor sit in a cache.
"""

import math
from http import HTTPStatus

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from starlette.responses import JSONResponse
from vllm.entrypoints.serve.exception_handling.error_response import create_error_response

from mask_store.errors import InvalidRef, MaskError
from mask_store.refs import MAX_REF_CHARS, NAME_PATTERN, MaskRef

_NAME = f"^{NAME_PATTERN}$"
MAX_ID_CHARS = 256  # response ids (vLLM's are ~40 characters)
MAX_MESSAGE_CHARS = 2000  # error messages; longer ones are cut, whatever they quote
CLIP_CHARS = 64  # of a client string quoted in an error message
RETRY_AFTER_S = 5  # what a 503 tells clients to wait; the openai client honours it (up to 60 s)


def clip(text: str, limit: int = CLIP_CHARS) -> str:
    """`text` for an error message: repr'd, and cut past `limit` characters with its full length said."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def check_ref(ref: str) -> str:
    """The canonical spelling of a REF ('math' -> 'math:latest'), after refusing any REF longer than a valid one
    could be: what caches and logs keep, so padding cannot grow them."""
    if len(ref) > MAX_REF_CHARS:
        raise InvalidRef(f"invalid mask ref {clip(ref)}: longer than {MAX_REF_CHARS} characters")
    return str(MaskRef.parse(ref))


def error_response(e: MaskError) -> JSONResponse:
    """A MaskError over HTTP with its own status, which each error class chooses by whether retrying can help
    (clients, the openai one among them, retry 408, 409, 429 and every 5xx); 503s go out with Retry-After."""
    return error_json(str(e), e.status, {"Retry-After": str(RETRY_AFTER_S)} if e.status == 503 else None)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoadMaskRequest(Strict):
    mask: str = Field(min_length=1, max_length=MAX_REF_CHARS, description="REF: NAME, NAME@N, NAME:TAG or a digest")
    pin: bool = False


class UnloadMaskRequest(Strict):
    mask: str = Field(min_length=1, max_length=MAX_REF_CHARS)


class ArmSpec(Strict):
    mask: str = Field(min_length=1, description="a mask REF, or 'base' for the bare model")
    weight: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    name: str | None = Field(default=None, pattern=_NAME, description="defaults to the mask REF")

    @field_validator("mask")
    @classmethod
    def _a_ref(cls, v: str) -> str:
        """An arm's REF ends up in response headers and the A/B log: checked here, not on every request."""
        if v != "base":
            try:
                check_ref(v)
            except InvalidRef as e:
                raise ValueError(str(e)) from e
        return v


class ExperimentSpec(Strict):
    name: str = Field(pattern=_NAME)
    arms: list[ArmSpec] = Field(min_length=2)

    @model_validator(mode="after")
    def _distinct_arm_names(self) -> "ExperimentSpec":
        names = [a.name or a.mask for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arm names must be distinct, got {names}")
        if not math.isfinite(sum(a.weight for a in self.arms)):  # an infinite total sends every user to one arm
            raise ValueError("arm weights must add up to a finite number")
        return self


class ExperimentsFile(Strict):
    experiments: list[ExperimentSpec]


class Feedback(Strict):
    id: str = Field(min_length=1, max_length=MAX_ID_CHARS,
                    description="the `id` of a completion or chat completion response")
    score: float

    @field_validator("score")
    @classmethod
    def _finite(cls, v: float) -> float:
        if v != v or v in (float("inf"), float("-inf")):
            raise ValueError("score must be a finite number")
        return v


_KINDS = {401: "AuthenticationError", 403: "PermissionDeniedError", 409: "ConflictError", 413: "RequestTooLargeError",
          422: "UnprocessableEntityError", 429: "RateLimitError", 500: "InternalServerError",
          503: "ServiceUnavailableError"}  # others: the status phrase, as 'BadRequestError' and 'NotFoundError' 


def error_json(message: str, status: int, headers: dict[str, str] | None = None) -> JSONResponse:
    """Every error maskserve answers, in the OpenAI schema, built by vLLM's own `create_error_response` (which also
    strips server paths and addresses from the message). Long messages are cut: whatever they quote stays small."""
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS] + "... (cut)"
    code = HTTPStatus(status)
    body = create_error_response(message, _KINDS.get(status, code.phrase.replace(" ", "") + "Error"), code)
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)

"""HTTP schemas for what maskserve adds to vLLM's OpenAI API: mask admin, experiments, feedback, and errors."""

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoadMaskRequest(Strict):
    mask: str = Field(min_length=1, description="REF: NAME, NAME@N, NAME:TAG or a digest prefix")
    pin: bool = False


class UnloadMaskRequest(Strict):
    mask: str = Field(min_length=1)


class ArmSpec(Strict):
    mask: str = Field(min_length=1, description="a mask REF, or 'base' for the bare model")
    weight: float = Field(default=1.0, gt=0)
    name: str | None = Field(default=None, pattern=_NAME, description="defaults to the mask REF")


class ExperimentSpec(Strict):
    name: str = Field(pattern=_NAME)
    arms: list[ArmSpec] = Field(min_length=2)

    @model_validator(mode="after")
    def _distinct_arm_names(self) -> "ExperimentSpec":
        names = [a.name or a.mask for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arm names must be distinct, got {names}")
        return self


class ExperimentsFile(Strict):
    experiments: list[ExperimentSpec]


class Feedback(Strict):
    id: str = Field(min_length=1, description="the `id` of a completion or chat completion response")
    score: float

    @field_validator("score")
    @classmethod
    def _finite(cls, v: float) -> float:
        if v != v or v in (float("inf"), float("-inf")):
            raise ValueError("score must be a finite number")
        return v


def error_body(message: str, status: int, kind: str | None = None, code: str | None = None) -> dict:
    """The OpenAI error schema, as vLLM's own errors use it."""
    kinds = {400: "BadRequestError", 401: "AuthenticationError", 403: "PermissionDeniedError",
             404: "NotFoundError", 409: "ConflictError", 422: "UnprocessableEntityError",
             500: "InternalServerError", 503: "ServiceUnavailableError", 507: "InsufficientStorageError"}
    return {"error": {"message": message, "type": kind or kinds.get(status, "Error"), "param": None,
                      "code": code or status}}

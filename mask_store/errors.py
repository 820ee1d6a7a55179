"""Errors a user can cause, each with one line that says what went wrong and names the thing involved.

Every command and route maps these to its own surface (CLI: one line on stderr and a non-zero exit, 2 for
`mask-store`, whose 1 means `verify` found problems, and 1 for the other commands; HTTP: an OpenAI error body and
the status given here). Anything else that escapes is a bug and keeps its traceback.
"""


class MaskError(Exception):
    """Base of user-facing errors; `status` is the HTTP status that fits it."""

    status = 400


class InvalidRef(MaskError):
    """A name, tag or ref that does not parse."""


class NotFound(MaskError):
    status = 404


class BaseMismatch(MaskError):
    """A mask used or pushed against a base model it was not trained on: no retry can help, so 422, not 409 (which
    clients such as the openai one retry)."""

    status = 422

    def __init__(self, what: str, mask_base: str, other_base: str):
        super().__init__(f"{what} was trained on base {mask_base}, not on base {other_base}")
        self.mask_base = mask_base
        self.other_base = other_base


class CorruptMask(MaskError):
    """A .mask file that is truncated, bit-flipped or not a mask at all."""

    status = 422


class StoreError(MaskError):
    """The store itself is unusable: not writable, unreachable, or damaged."""

    status = 503


class ModelError(MaskError):
    """A model folder without usable weights, or a target that does not exist in it."""

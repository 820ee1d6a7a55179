"""The one rule for everything maskserve persists: a version in the data, older versions upgraded on read, newer
versions refused.

Each format (the `.mask` header, the local index, the S3 store layout, trainer checkpoints, the A/B log, the base-id
cache) owns its current version and a table `{v: step}` whose step turns version v into v + 1. Data written before
a format carried a version is version 1 of that format. Readers upgrade on load; a version above the current one is
refused with one line naming the file, since older code cannot know what a newer field means.
"""

from collections.abc import Callable, Mapping
from typing import TypeVar

from .errors import MaskError

T = TypeVar("T")


def readable(current: int) -> str:
    """The versions a reader with `current` accepts, as messages say them."""
    return "1" if current == 1 else f"1 to {current}"


def upgrade(value: T, version: object, current: int, steps: Mapping[int, Callable[[T], T]], source: str,
            error: type[MaskError] = MaskError) -> T:
    """`value` as version `current`, applying one step per version it is behind; `error` naming `source` if its
    version is not one this code reads."""
    if type(version) is not int or version < 1:
        raise error(f"{source}: format version {version!r} is not one maskserve writes "
                    f"(this maskserve reads {readable(current)})")
    if version > current:
        raise error(f"{source}: format version {version} is newer than this maskserve reads "
                    f"({readable(current)}); upgrade maskserve")
    while version < current:
        value = steps[version](value)
        version += 1
    return value

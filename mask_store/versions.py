"""The one rule for everything maskserve persists: a version in the data, older versions upgraded on read, newer
versions refused.

Each format (the `.mask` header, the local index, the S3 store layout, trainer checkpoints, the A/B log, the base-id
cache) owns its current version and a table `{v: step}` whose step turns version v into v + 1. Data written before
a format carried a version is version 1 of that format. Readers upgrade on load; a version above the current one is
refused with one line naming the file, since older code cannot know what a newer field means.
"""

import sqlite3
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


def open_sqlite(db: sqlite3.Connection, schema: str, current: int,
                steps: Mapping[int, Callable[[sqlite3.Connection], sqlite3.Connection]], source: str,
                error: type[MaskError] = MaskError) -> None:
    """Create `schema` in a new file, or upgrade an older one in place, and record `current` as SQLite's
    `user_version`, all under the write lock: concurrent openers wait, then find it done. A file from before the
    format carried a version reads 0 and is version 1 (the code before opened every file with the version-1 schema).
    `db` must be in autocommit mode (isolation_level=None)."""
    if _user_version(db) == current:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        version = _user_version(db)
        if version == 0 and db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone():
            version = 1
        elif version == 0:
            for statement in filter(str.strip, schema.split(";")):
                db.execute(statement)
            version = current
        upgrade(db, version, current, steps, source, error)
        db.execute(f"PRAGMA user_version = {current}")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _user_version(db: sqlite3.Connection) -> int:
    return db.execute("PRAGMA user_version").fetchone()[0]

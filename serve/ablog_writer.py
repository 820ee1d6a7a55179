"""The server's side of the A/B log: every write on one thread of its own, in the order the calls were made.

A SQLite commit waits on the disk; on the event loop that wait stalls every request the server is handling. Here it
stalls one thread. Because writes keep their order, feedback sent right after a response still finds that
response's row. Pending writes finish before the interpreter exits (concurrent.futures joins its threads then).
"""

import asyncio
from concurrent.futures import Future, ThreadPoolExecutor

from mask_store.logs import get_logger

from .ablog import ABLog

logger = get_logger("serve")


class ABLogWriter:
    def __init__(self, log: ABLog):
        self.log = log
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="maskserve-ablog")

    def record(self, *row) -> None:
        """ABLog.record's arguments; returns at once. A failed write is logged with its traceback."""
        self._thread.submit(self.log.record, *row).add_done_callback(_log_failure)

    async def feedback(self, response_id: str, score: float) -> bool:
        return await asyncio.wrap_future(self._thread.submit(self.log.feedback, response_id, score))

    async def save_experiment(self, name: str, definition: str) -> None:
        await asyncio.wrap_future(self._thread.submit(self.log.save_experiment, name, definition))

    def flush(self) -> None:
        """Wait for every write submitted so far (tests, and readers in the same process)."""
        self._thread.submit(lambda: None).result()


def _log_failure(future: Future) -> None:
    if future.exception() is not None:
        logger.error("writing the A/B log failed", exc_info=future.exception())

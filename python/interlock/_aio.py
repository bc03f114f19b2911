"""The asyncio bridge's Python half: interlock's runtime completes an asyncio future through
``loop.call_soon_threadsafe(_deliver, future, result, exception)``."""

from __future__ import annotations

from typing import Any, Optional


def _deliver(future: Any, result: Any, exception: Optional[BaseException]) -> None:
    if future.done():
        # Cancelled meanwhile: a guard in `result` is dropped with this frame, which releases it.
        return
    if exception is not None:
        future.set_exception(exception)
    else:
        future.set_result(result)

"""The one adapter between finsent and faust-streaming / aiokafka internals.

Everything here leans on faust-streaming 0.15 and aiokafka behaviour that is not public API, so
it is pinned: importing this module checks the faust-streaming version. What it works around:

- Isolation level: faust reads ``read_uncommitted`` unless ``processing_guarantee`` is
  exactly-once, so records of *aborted* upstream transactions would be scored. finsent's
  consumer reads ``read_committed`` (``use_read_committed``), like every consumer that must not
  see aborted data.
- Offset gaps: faust stops committing at an offset it never acknowledged, so a transaction
  marker or a compacted offset upstream stalls its commits (robinhood/faust#401,
  faust-streaming/faust#312 and #606); ``add_gap`` hands such runs to faust's own gap list.
"""

from __future__ import annotations

import faust

SUPPORTED = ("0.15.",)
if not faust.__version__.startswith(SUPPORTED):
    raise ImportError(
        f"finsent's faust adapter (pipeline/faustcompat.py) supports faust-streaming {', '.join(SUPPORTED)}x; "
        f"found {faust.__version__}: check each workaround in its docstring before widening the pin"
    )

_patched = False


def use_read_committed() -> None:
    """Makes the worker's consumer skip aborted transactions (idempotent; call before it starts)."""
    global _patched
    if _patched:
        return
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    create = AIOKafkaConsumerThread._create_worker_consumer

    def _create_worker_consumer(self, transport):
        consumer = create(self, transport)
        consumer._isolation_level = "read_committed"  # read by AIOKafkaConsumer.start() for its fetcher
        return consumer

    AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer
    _patched = True


async def add_gap(app: faust.App, tp, start: int, end: int) -> None:
    """Lets faust commit past offsets ``start``..``end - 1``, which hold nothing to process."""
    add = getattr(app.consumer, "_add_gap", None)
    if add is not None:
        await add(tp, start, end)

"""Decode stage: raw topic -> by-fingerprint topic (valid messages) or dead letters.

Each message is validated (decode.py) and re-keyed by the fingerprint of its normalised text, so
copies of one text meet in one partition of the classify stage, next to their de-duplication
entries. A partition's messages keep their order.
"""

from __future__ import annotations

from ..config import Settings
from ..decode import Origin, dead_letter, decode, too_large, validated
from ..dedup import fingerprint
from ..faustcompat import Intake
from ..schemas import DeadLetter
from ..transactions import Output
from .batching import Pending, Worker
from .dead_letters import DeadLetters
from .outbox import Outbox, deliver_and_acknowledge


class DecodeStage:
    def __init__(self, settings: Settings, intake: Intake, outbox: Outbox, valid_topic, dead_letters: DeadLetters):
        self.settings, self.intake, self.outbox = settings, intake, outbox
        self.valid_topic, self.dead_letters = valid_topic, dead_letters

    async def run(self, stream) -> None:
        """The stream loop takes batches; a worker task delivers everything pending at once, so
        a batch grows while the previous one's delivery (exactly-once: its transaction) runs."""
        settings = self.settings
        pending = Pending(max_events=settings.max_batch * 8)
        cadence = self.outbox.cadence()

        async def deliver() -> None:
            await cadence.wait()
            batches = await pending.take(settings.max_batch * 4)
            outputs = [(event, self._forward(event)) for batch in batches for event in batch.events]
            await deliver_and_acknowledge(self.outbox, self.intake, batches, outputs, "decode")

        deliverer = Worker(deliver)
        deliverer.start()
        try:
            async for events in stream.take_events(settings.max_batch * 4, within=settings.max_wait_ms / 1000):
                await deliverer.guard(pending.put(await self.intake.take(events)))
        finally:  # undelivered batches stay unacknowledged: they are read again after a restart
            deliverer.stop()

    def _forward(self, event) -> Output:
        message = event.message
        timestamp_ms = int(message.timestamp * 1000) if message.timestamp else None
        origin = Origin(message.topic, message.partition, message.offset, timestamp_ms)
        result = decode(
            event.value,
            origin,
            max_text_chars=self.settings.max_text_chars,
            unknown_fields=self.settings.unknown_fields,
        )
        if isinstance(result, DeadLetter):
            return self.dead_letters.output(result)
        value = validated(result, origin).model_dump_json().encode()
        if problem := too_large(value, "the validated message"):  # e.g. huge unknown fields kept
            return self.dead_letters.output(dead_letter(event.value, origin, "too_large", problem))
        return Output(self.valid_topic, fingerprint(result.message.text).encode(), value)

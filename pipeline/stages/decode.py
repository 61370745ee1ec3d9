"""Decode stage: raw topic -> by-fingerprint topic (valid messages) or dead letters.

Each message is validated (decode.py) and re-keyed by the fingerprint of its normalised text, so
copies of one text meet in one partition of the classify stage, next to their de-duplication
entries. A partition's messages keep their order.
"""

from __future__ import annotations

import asyncio

from ..config import Settings
from ..decode import Origin, dead_letter, decode, too_large, validated
from ..dedup import fingerprint
from ..faustcompat import Intake
from ..schemas import DeadLetter
from .dead_letters import DeadLetters


class DecodeStage:
    def __init__(self, settings: Settings, intake: Intake, valid_topic, dead_letters: DeadLetters):
        self.settings, self.intake = settings, intake
        self.valid_topic, self.dead_letters = valid_topic, dead_letters

    async def run(self, stream) -> None:
        within = self.settings.max_wait_ms / 1000
        async for events in stream.take_events(self.settings.max_batch * 4, within=within):
            async with self.intake.batch(events) as batch:
                deliveries = [await self._forward(event) for event in batch.events]
                await asyncio.gather(*deliveries)  # delivered before the batch is acknowledged

    async def _forward(self, event):
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
            return await self.dead_letters.send(result)
        value = validated(result, origin).model_dump_json().encode()
        if problem := too_large(value, "the validated message"):  # e.g. huge unknown fields kept
            return await self.dead_letters.send(dead_letter(event.value, origin, "too_large", problem))
        return await self.valid_topic.send(key=fingerprint(result.message.text).encode(), value=value)

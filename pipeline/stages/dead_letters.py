"""Writing a dead letter: any stage's way out for a message it cannot process."""

from __future__ import annotations

from .. import metrics
from ..schemas import DeadLetter


class DeadLetters:
    def __init__(self, topic):
        self.topic = topic

    async def send(self, letter: DeadLetter):
        """Returns the delivery future: the caller awaits it before acknowledging the input."""
        metrics.DEAD_LETTERS.labels(letter.reason).inc()
        metrics.MESSAGES.labels("dead_letter").inc()
        return await self.topic.send(key=None, value=letter.model_dump_json().encode())

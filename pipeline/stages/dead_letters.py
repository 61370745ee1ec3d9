"""Writing a dead letter: any stage's way out for a message it cannot process."""

from __future__ import annotations

from .. import metrics
from ..schemas import DeadLetter
from ..transactions import Output


class DeadLetters:
    def __init__(self, topic):
        self.topic = topic

    def output(self, letter: DeadLetter) -> Output:
        """The dead letter as a record for the stage's outbox (delivered with the batch)."""
        metrics.DEAD_LETTERS.labels(letter.reason).inc()
        metrics.MESSAGES.labels("dead_letter").inc()
        return Output(self.topic, None, letter.model_dump_json().encode())

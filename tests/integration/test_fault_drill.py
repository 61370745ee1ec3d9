"""The fault drill in its short form (CI): 3,000 messages while the exactly-once worker is
SIGKILLed twice, the broker restarts once and Elasticsearch is down for 30 s. The full 20,000-message drill is
`make drill` (see tests/integration/drill.py)."""

from __future__ import annotations

import pytest

from .drill import expected_episodes, run_drill

MESSAGES = 3000


# Past the drill's own waits, so a stall fails with their diagnosis rather than a bare timeout.
@pytest.mark.timeout(1200)
def test_nothing_is_lost_or_repeated_through_kills_a_broker_restart_and_an_elasticsearch_outage(
    local_stack, tiny_bundle, phrasebank, tmp_path
):
    result = run_drill(local_stack, tiny_bundle, phrasebank, tmp_path, messages=MESSAGES, rate=50, kills=2)
    summary = "\n".join(result.lines())
    print(summary)
    # Every good message in Elasticsearch and on the scored topic; `twice` below: none repeated there.
    assert result.indexed == result.scored_on_topic == result.sent_good
    assert result.dead_lettered_bad == result.sent_bad  # every bad one dead-lettered
    assert result.windows_compared > 1000 and result.windows_equal == result.windows_compared, summary
    assert result.over_counted_windows == 0 and result.late_records == 0, summary
    assert len(result.alert_episodes) == expected_episodes(MESSAGES) == 1
    assert all(statuses == ["resolved"] for statuses in result.alert_episodes.values())
    assert result.alert_topic_repeats == 0
    assert result.twice == {"scored": 0, "deadletter": 0, "aggregates": 0, "alerts": 0}  # exactly-once
    assert sum("SIGKILL" in e for e in result.events) == 2 and any("broker up" in e for e in result.events)

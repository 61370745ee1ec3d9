"""Kibana saved objects (deploy/kibana/finsent.ndjson): data views, visualisations, the alerts
table and the dashboard, imported with one call to Kibana's saved-objects API.

The file is written for the default index prefix ``finsent``; another prefix is substituted in
the data views' index patterns (and ids, so two deployments can share one Kibana).
"""

from __future__ import annotations

import json
from pathlib import Path

import requests

SAVED_OBJECTS = Path(__file__).resolve().parents[1] / "deploy" / "kibana" / "finsent.ndjson"
DEFAULT_PREFIX = "finsent"


def saved_objects(prefix: str = DEFAULT_PREFIX, path: Path = SAVED_OBJECTS) -> list[dict]:
    objects = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if prefix == DEFAULT_PREFIX:
        return objects
    # Every id, title and reference starting with the default prefix moves to the new one.
    text = json.dumps(objects).replace(f'"{DEFAULT_PREFIX}-', f'"{prefix}-')
    return json.loads(text)


def import_saved_objects(
    kibana_url: str, prefix: str = DEFAULT_PREFIX, auth: tuple[str, str] | None = None, timeout_s: float = 30
) -> dict:
    """Imports (overwriting) finsent's saved objects; returns Kibana's answer, raises with its errors."""
    body = "\n".join(json.dumps(o) for o in saved_objects(prefix)) + "\n"
    response = requests.post(
        f"{kibana_url.rstrip('/')}/api/saved_objects/_import",
        params={"overwrite": "true"},
        headers={"kbn-xsrf": "finsent"},
        auth=auth,
        timeout=timeout_s,
        files={"file": ("finsent.ndjson", body, "application/ndjson")},
    )
    if response.status_code != 200:
        raise RuntimeError(
            f"Kibana at {kibana_url} refused the import: HTTP {response.status_code} {response.text[:500]}"
        )
    answer = response.json()
    if not answer.get("success", False):
        raise RuntimeError(
            f"Kibana imported {answer.get('successCount', 0)} objects with errors: {answer.get('errors')}"
        )
    return answer

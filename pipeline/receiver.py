"""A webhook receiver for Alertmanager that writes each notification's alerts as lines.

For the one-machine setups (compose, the local stack) where no pager is wired yet: Alertmanager's
`finsent-webhook` receiver points here, and every alert it sends shows up in the log, one JSON
line each (`docker compose logs alert-receiver`). Production points the receiver at a pager.
"""

from __future__ import annotations

import http.server
import json
import sys
import threading
from collections.abc import Callable


def alert_lines(notification: dict) -> list[str]:
    """One JSON line per alert of an Alertmanager webhook notification (version 4)."""
    lines = []
    for alert in notification.get("alerts", []):
        labels, annotations = alert.get("labels", {}), alert.get("annotations", {})
        line = {
            "status": alert.get("status"),
            "alertname": labels.get("alertname"),
            "severity": labels.get("severity"),
            "topic": labels.get("topic"),
            "startsAt": alert.get("startsAt"),
            "summary": annotations.get("summary"),
        }
        lines.append(json.dumps(line, ensure_ascii=False))
    return lines


def _handler(on_notification: Callable[[dict], None]):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            try:
                length = int(self.headers.get("Content-Length", 0))
                notification = json.loads(self.rfile.read(length))
                if not isinstance(notification, dict):
                    raise ValueError("not a JSON object")
            except ValueError as exc:  # a bad request is answered, never fatal
                self.send_error(400, f"expected an Alertmanager webhook JSON object: {exc}")
                return
            on_notification(notification)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):  # the alerts are the log; not every request
            pass

    return Handler


def start(host: str, port: int, on_notification: Callable[[dict], None]) -> http.server.ThreadingHTTPServer:
    """Serves on a daemon thread; ``server.shutdown()`` stops it."""
    server = http.server.ThreadingHTTPServer((host, port), _handler(on_notification))
    threading.Thread(target=server.serve_forever, name="alert-receiver", daemon=True).start()
    return server


def print_alerts(notification: dict) -> None:
    for line in alert_lines(notification):
        print(line, file=sys.stdout, flush=True)

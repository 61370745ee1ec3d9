"""The live web view the worker serves on its Faust web port: ``/`` (a page) and ``/api/live`` (JSON).

It shows what this worker sees: per ticker/topic the latest closed windows (sentiment, volume,
negative share, a trend of the last windows), active alerts, throughput and the model in use.
With several workers each shows the topics of its own partitions (Grafana shows them all).
State is bounded: the tracked topics times ``HISTORY`` windows, and the last ``RECENT_ALERTS``.
"""

from __future__ import annotations

import time
from collections import deque

from . import metrics

HISTORY = 15  # tumbling windows kept per topic for the trend
RECENT_ALERTS = 20


class LiveView:
    def __init__(self, tumbling_window: str):
        self.tumbling_window = tumbling_window
        self.topics: dict[str, deque] = {}
        self.active: dict[str, dict] = {}
        self.resolved: deque = deque(maxlen=RECENT_ALERTS)
        self.scored: deque = deque()  # (monotonic second, messages)
        self.scored_total = 0

    def on_scored(self, count: int) -> None:
        now = int(time.monotonic())
        if self.scored and self.scored[-1][0] == now:
            self.scored[-1] = (now, self.scored[-1][1] + count)
        else:
            self.scored.append((now, count))
        while self.scored and self.scored[0][0] < now - 60:
            self.scored.popleft()
        self.scored_total += count

    def on_windows(self, aggregates, alerts, forgotten) -> None:
        for aggregate in aggregates:
            if aggregate.window == self.tumbling_window:
                history = self.topics.setdefault(aggregate.topic, deque(maxlen=HISTORY))
                history.append(
                    {
                        "start": aggregate.start.isoformat(),
                        "messages": aggregate.messages,
                        "sentiment": aggregate.sentiment_mean,
                        "negative": aggregate.share_negative,
                    }
                )
        for alert in alerts:
            document = alert.model_dump(mode="json")
            if alert.status == "firing":
                self.active[alert.id] = document
            else:
                self.active.pop(alert.id, None)
                self.resolved.appendleft(document)
        for name in forgotten:
            self.topics.pop(name, None)

    def throughput(self, seconds: int = 10) -> float:
        now = int(time.monotonic())
        return sum(n for second, n in self.scored if second > now - seconds - 1 and second < now) / seconds

    def snapshot(self, model_version: str, provider: str, variant: str) -> dict:
        topics = [
            {
                "topic": name,
                "latest": history[-1],
                "trend": [w["sentiment"] for w in history],
                "volume": [w["messages"] for w in history],
            }
            for name, history in self.topics.items()
            if history
        ]
        topics.sort(key=lambda t: -t["latest"]["messages"])
        return {
            "model": {"version": model_version, "provider": provider, "variant": variant},
            "throughput_msgs_per_s": round(self.throughput(), 1),
            "scored_total": self.scored_total,
            "window": self.tumbling_window,
            "topics": topics,
            "active_alerts": sorted(self.active.values(), key=lambda a: a["fired_at"], reverse=True),
            "recent_resolved": list(self.resolved),
        }


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>finsent live</title>
<style>
 body{font-family:system-ui,sans-serif;margin:1.5em;background:#fafafa;color:#222}
 h1{font-size:1.3em} .bar{display:flex;gap:2em;margin-bottom:1em} .bar div{background:#fff;padding:.6em 1em;border-radius:6px;box-shadow:0 1px 2px #0002}
 table{border-collapse:collapse;background:#fff;box-shadow:0 1px 2px #0002;margin-bottom:1.5em}
 td,th{padding:.35em .8em;border-bottom:1px solid #eee;text-align:left} .neg{color:#c0392b} .pos{color:#1e8449}
 .page{background:#fdecea} .warning{background:#fff6e0}
</style></head>
<body>
<h1>finsent — live</h1>
<div class="bar"><div>model <b id="model">…</b></div><div>throughput <b id="throughput">…</b> msg/s</div>
<div>scored <b id="scored">…</b></div><div>updated <b id="updated">never</b></div></div>
<h2>Active alerts</h2>
<table id="alerts"><thead><tr><th>severity</th><th>rule</th><th>topic</th><th>since</th><th>summary</th></tr></thead><tbody></tbody></table>
<h2>Recently resolved</h2>
<table id="resolved"><thead><tr><th>severity</th><th>rule</th><th>topic</th><th>fired</th><th>resolved</th><th>summary</th></tr></thead><tbody></tbody></table>
<h2>Tickers and topics (<span id="window"></span> windows)</h2>
<table id="topics"><thead><tr><th>ticker/topic</th><th>window</th><th>messages</th><th>sentiment</th><th>negative</th><th>sentiment trend</th><th>volume</th></tr></thead><tbody></tbody></table>
<script>
function esc(s){return String(s).replace(/[&<>"]/g,c=>({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]))}
function spark(values){
  const v=values.filter(x=>x!==null); if(v.length<2) return '';
  const w=120,h=24,step=w/(values.length-1);
  const pts=values.map((x,i)=>x===null?null:`${(i*step).toFixed(1)},${(h/2-(x*h/2)).toFixed(1)}`).filter(Boolean).join(' ');
  return `<svg width="${w}" height="${h}"><line x1="0" y1="${h/2}" x2="${w}" y2="${h/2}" stroke="#ddd"/><polyline fill="none" stroke="#2c3e50" points="${pts}"/></svg>`;
}
function bars(values){
  const top=Math.max(1,...values), w=120, h=24, bw=w/Math.max(values.length,1);
  return `<svg width="${w}" height="${h}">`+values.map((x,i)=>`<rect x="${(i*bw).toFixed(1)}" y="${(h-x/top*h).toFixed(1)}" width="${(bw-1).toFixed(1)}" height="${(x/top*h).toFixed(1)}" fill="#95a5a6"/>`).join('')+'</svg>';
}
async function refresh(){
  try{
    const r=await fetch('api/live'); const d=await r.json();
    document.getElementById('model').textContent=`${d.model.version} (${d.model.provider}, ${d.model.variant})`;
    document.getElementById('throughput').textContent=d.throughput_msgs_per_s;
    document.getElementById('scored').textContent=d.scored_total;
    document.getElementById('window').textContent=d.window;
    document.getElementById('updated').textContent=new Date().toLocaleTimeString();
    document.querySelector('#alerts tbody').innerHTML=d.active_alerts.map(a=>
      `<tr class="${esc(a.severity)}" data-rule="${esc(a.rule)}" data-topic="${esc(a.topic)}"><td>${esc(a.severity)}</td><td>${esc(a.rule)}</td><td>${esc(a.topic)}</td><td>${esc(a.window_start)}</td><td>${esc(a.summary)}</td></tr>`).join('')
      || '<tr><td colspan="5">none</td></tr>';
    document.querySelector('#resolved tbody').innerHTML=d.recent_resolved.map(a=>
      `<tr data-rule="${esc(a.rule)}" data-topic="${esc(a.topic)}"><td>${esc(a.severity)}</td><td>${esc(a.rule)}</td><td>${esc(a.topic)}</td><td>${esc(a.window_start)}</td><td>${esc(a.resolved_at)}</td><td>${esc(a.summary)}</td></tr>`).join('')
      || '<tr><td colspan="6">none</td></tr>';
    document.querySelector('#topics tbody').innerHTML=d.topics.map(t=>{
      const s=t.latest.sentiment; const cls=s===null?'':(s<0?'neg':'pos');
      return `<tr data-topic="${esc(t.topic)}"><td>${esc(t.topic)}</td><td>${esc(t.latest.start)}</td><td>${t.latest.messages}</td>`+
             `<td class="${cls}">${s===null?'–':s.toFixed(2)}</td><td>${(t.latest.negative*100).toFixed(0)}%</td><td>${spark(t.trend)}</td><td>${bars(t.volume)}</td></tr>`}).join('');
  }catch(e){document.getElementById('updated').textContent='error: '+e;}
}
refresh(); setInterval(refresh, 2000);
</script></body></html>
"""


def add_pages(app, model, live: LiveView, ready) -> None:
    """The worker's web pages on its Faust web server: metrics, health, readiness, the live view.
    ``ready``: () -> (ready, checks), see health.readiness."""

    @app.page("/metrics")
    async def metrics_page(web, request):
        body, content_type = metrics.exposition()
        return web.bytes(body, content_type=content_type.split(";")[0])

    @app.page("/")
    async def live_page(web, request):
        return web.html(PAGE)

    @app.page("/api/live")
    async def live_api(web, request):
        classifier = model.classifier
        return web.json(live.snapshot(classifier.model_version, classifier.provider, classifier.variant))

    @app.page("/healthz")
    async def health_page(web, request):
        # Liveness: answering at all means the event loop runs; a model is loaded.
        classifier = model.classifier
        return web.json({"status": "ok", "model_version": classifier.model_version, "provider": classifier.provider})

    @app.page("/readyz")
    async def ready_page(web, request):
        ok, checks = ready()
        return web.json({"status": "ready" if ok else "not ready", **checks}, status=200 if ok else 503)

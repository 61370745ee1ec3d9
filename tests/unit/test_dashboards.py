"""Grafana and Kibana don't run here: check that every panel asks for metrics, labels and fields
finsent really emits."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from pipeline import metrics
from pipeline.config import Settings
from pipeline.kibana import saved_objects
from pipeline.sinks.elasticsearch import INDICES

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = json.loads((ROOT / "deploy/grafana/dashboards/finsent.json").read_text())
KIBANA = saved_objects()
SCRAPE_LABELS = {"instance", "job"}  # added by Prometheus to every series


def exposed_series() -> dict[str, set[str]]:
    """Series name -> label names, as Prometheus sees them."""
    series = {}
    for metric in metrics.REGISTRY.collect():
        labels = set()
        for collector in metrics.__dict__.values():
            if getattr(collector, "_name", None) == metric.name:
                labels = set(collector._labelnames)
        if metric.type == "counter":
            series[f"{metric.name}_total"] = labels
        elif metric.type == "histogram":
            for suffix in ("_bucket", "_sum", "_count"):
                series[f"{metric.name}{suffix}"] = labels | ({"le"} if suffix == "_bucket" else set())
        else:
            series[metric.name] = labels
    return series


SERIES = exposed_series()


def grafana_queries() -> list[tuple[str, str]]:
    queries = [(p["title"], t["expr"]) for p in GRAFANA["panels"] for t in p["targets"]]
    queries += [(f"variable {v['name']}", v["definition"]) for v in GRAFANA["templating"]["list"] if "definition" in v]
    return queries


@pytest.mark.parametrize("title,expr", grafana_queries())
def test_grafana_queries_use_emitted_metrics_and_labels(title, expr):
    names = set(re.findall(r"\bfinsent_[a-z_]+", expr))
    assert names, f"{title}: no finsent metric in {expr}"
    for name in names:
        assert name in SERIES, f"{title}: {name} is not a metric finsent exposes"
        for selector in re.findall(rf"{name}\{{([^}}]*)\}}", expr):
            for label in re.findall(r"(\w+)\s*=~?", selector):
                assert label in SERIES[name] | SCRAPE_LABELS, f"{title}: {name} has no label {label}"
    used = {label.strip() for group in re.findall(r"by \(([^)]*)\)", expr) for label in group.split(",")}
    available = set().union(*(SERIES[n] for n in names)) | SCRAPE_LABELS
    assert used <= available, f"{title}: grouping by {used - available}, which no queried metric has"
    assert "label_values" not in expr or re.search(r"label_values\(\w+, (\w+)\)", expr).group(1) in available


def test_grafana_window_choices_are_the_windows_the_workers_close():
    """Not a fixed list: whatever windows the workers are configured with, as they report them."""
    window = next(v for v in GRAFANA["templating"]["list"] if v["name"] == "window")
    assert window["definition"] == "label_values(finsent_windows_closed_total, window)"
    assert "window" in SERIES["finsent_windows_closed_total"]
    assert window["current"]["value"] == Settings().window_config().specs[0].name


def test_grafana_is_provisioned_by_docker_compose():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/finsent.yml").read_text())
    mounts = {v.split(":")[1]: v.split(":")[0] for v in compose["services"]["grafana"]["volumes"] if v.startswith("./")}
    folder = provider["providers"][0]["options"]["path"]
    assert mounts[folder] == "./deploy/grafana/dashboards"
    datasource_uids = {
        d["uid"]
        for d in yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/finsent.yml").read_text())[
            "datasources"
        ]
    }
    assert {p["datasource"]["uid"] for p in GRAFANA["panels"]} <= datasource_uids


def _fields(mapping: dict, prefix: str = "") -> set[str]:
    out = set()
    for name, spec in mapping["properties"].items():
        out.add(prefix + name)
        if "properties" in spec:
            out |= _fields(spec, f"{prefix}{name}.")
    return out


INDEX_FIELDS = {f"finsent-{suffix}*": _fields(mapping) for suffix, mapping in INDICES.items()}
BY_ID = {o["id"]: o for o in KIBANA}


def _index_of(obj: dict) -> str:
    ref = next(r for r in obj["references"] if r["type"] == "index-pattern")
    return BY_ID[ref["id"]]["attributes"]["title"]


def kibana_field_uses() -> list[tuple[str, str, str]]:
    uses = []
    for obj in KIBANA:
        attributes = obj["attributes"]
        if obj["type"] == "index-pattern":
            uses.append((attributes["title"], attributes["title"], attributes["timeFieldName"]))
            continue
        if obj["type"] not in ("visualization", "search"):
            continue
        index = _index_of(obj)
        query = json.loads(attributes["kibanaSavedObjectMeta"]["searchSourceJSON"])["query"]["query"]
        # KQL's nested syntax, entities:{ label : "x" }, names entities.label.
        query = re.sub(
            r"(\w+)\s*:\s*\{([^}]*)\}",
            lambda m: re.sub(r"(\w+)(\s*:)", rf"{m.group(1)}.\1\2", m.group(2)),
            query,
        )
        fields = re.findall(r"([\w.]+)\s*:", query)
        if obj["type"] == "visualization":
            fields += [agg["params"]["field"] for agg in json.loads(attributes["visState"])["aggs"]]
        else:
            fields += attributes["columns"] + [field for field, _ in attributes["sort"]]
        uses += [(attributes["title"], index, field) for field in fields]
    return uses


@pytest.mark.parametrize("title,index,field", kibana_field_uses())
def test_kibana_objects_use_mapped_fields(title, index, field):
    assert index in INDEX_FIELDS, f"{title}: {index} is not an index finsent writes"
    assert field in INDEX_FIELDS[index], f"{title}: {index} has no field {field}"


def test_kibana_dashboard_references_resolve():
    dashboard = BY_ID["finsent-overview"]
    panels = json.loads(dashboard["attributes"]["panelsJSON"])
    names = {r["name"]: r for r in dashboard["references"]}
    assert len(panels) >= 4
    for panel in panels:
        ref = names[panel["panelRefName"]]
        assert ref["id"] in BY_ID and BY_ID[ref["id"]]["type"] == ref["type"]
    alerts_table = next(o for o in KIBANA if o["type"] == "search" and _index_of(o) == "finsent-alerts*")
    assert alerts_table["id"] in {r["id"] for r in dashboard["references"]}


def test_kibana_objects_follow_another_index_prefix():
    moved = saved_objects(prefix="acme")
    titles = {o["attributes"]["title"] for o in moved if o["type"] == "index-pattern"}
    assert titles == {"acme-scored*", "acme-aggregates*", "acme-alerts*"}
    assert "finsent-" not in json.dumps([o["references"] for o in moved])

"""Secured connections against a real broker with SASL_SSL, SASL_PLAINTEXT (PLAIN and
SCRAM-SHA-512) and mutual-TLS listeners, and a real Elasticsearch node with security and HTTPS:
the worker, `finsent replay`, `finsent report` and `finsent topics` all connect through the one
configuration module, no secret shows up anywhere they write, and hostile message content stays
data in Elasticsearch."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from elasticsearch import Elasticsearch

from .harness import Pipeline, finsent, wait_for
from .secured import (
    CLIENT_KEY_PASSWORD,
    ES_PASSWORD,
    KAFKA_PASSWORD,
    SecuredElasticsearch,
    SecuredKafka,
    make_certificates,
)

SECRETS = (KAFKA_PASSWORD, ES_PASSWORD, CLIENT_KEY_PASSWORD)
MODES = ["sasl_ssl-scram", "sasl_ssl-plain", "sasl_plaintext-scram", "sasl_plaintext-plain", "mtls"]


@pytest.fixture(scope="module")
def secured(local_stack, tmp_path_factory):
    """Both secured services, started for this module (on their own ports) and stopped after it."""
    home = tmp_path_factory.mktemp("secured")
    certs = make_certificates(home / "certs")
    kafka, es = SecuredKafka(home, local_stack, certs), SecuredElasticsearch(home, local_stack, certs)
    try:
        kafka.start()
        es.start()
        yield kafka, es
    finally:
        kafka.stop()
        es.stop()


def as_files(env: dict, directory: Path) -> dict:
    """The same settings with every password given as a FINSENT_*_FILE, as container secrets are."""
    out = {}
    for key, value in env.items():
        if key.endswith("PASSWORD"):
            path = directory / key.lower()
            path.write_text(value + "\n")
            out[f"{key}_FILE"] = str(path)
        else:
            out[key] = value
    return out


def hostile_messages(prefix: str) -> list[dict]:
    """Content that would change an index, a query or a bulk request if it were ever spliced in."""
    return [
        {
            "id": "../../_all",
            "text": 'Profit rose {"script": {"source": "ctx._source.label = \'x\'"}}',
            "tickers": ["_all", "*"],
            "topics": [f"{prefix}-*", "../alerts"],
            "source": "_bulk",
        },
        {
            "id": f'x"}}\n{{"delete":{{"_index":"{prefix}-scored","_id":"plain-1"}}}}\n',
            "text": "Shares fell after the {{ctx}} $(rm -rf /) '; DROP TABLE results",
            "run_id": "../../etc",
        },
        {"id": f"{prefix}-alerts", "text": "Revenue was flat", "tickers": [f"{prefix}-scored"]},
        {"id": "plain-1", "text": "Operating profit increased", "tickers": ["ACME"]},
    ]


@pytest.mark.parametrize("mode", MODES)
def test_worker_and_tools_over_secured_kafka_and_elasticsearch_leak_no_secret(
    secured, mode, tiny_bundle, tmp_path, unique, phrasebank
):
    kafka, es = secured
    env = {**kafka.client_env(mode), **es.client_env("basic", f"s{unique}")}
    if mode in ("sasl_ssl-scram", "mtls"):
        env = as_files(env, tmp_path)
    pipeline = Pipeline(name=f"s{unique}", bundle=tiny_bundle, workdir=tmp_path, extra_env=env)
    created = finsent(pipeline.env, "topics", "--create")  # as an operator would, before the workers
    assert created.returncode == 0 and pipeline.env["FINSENT_TOPIC_DEADLETTER"] in created.stdout, created.stderr
    worker = pipeline.start_worker(0)
    try:
        labelled = tmp_path / "labelled.txt"
        labelled.write_text(
            "\n".join(Path(phrasebank).read_text(encoding="latin-1").splitlines()[:20]), encoding="latin-1"
        )
        replay = finsent(pipeline.env, "replay", str(labelled), "--rate", "200", "--run-id", f"run-{unique}")
        assert replay.returncode == 0, replay.stderr
        hostile = hostile_messages(pipeline.name)
        pipeline.produce([json.dumps(m).encode() for m in hostile] + [b"not json {"])
        ids = pipeline.wait_indexed(20 + len(hostile))
        letters = pipeline.read_topic("FINSENT_TOPIC_DEADLETTER", 1)
        assert [letter["reason"] for letter in letters] == ["invalid_json"]

        client = pipeline.es()
        for message in hostile:  # stored as sent, under its own id, in finsent's own indices
            assert message["id"] in ids
            hits = client.search(index=f"{pipeline.name}-scored", query={"ids": {"values": [message["id"]]}})
            assert [h["_source"]["text"] for h in hits["hits"]["hits"]] == [message["text"]]
        indices = sorted(client.indices.get(index=f"{pipeline.name}*", expand_wildcards="all"))
        dated = re.compile(rf"{re.escape(pipeline.name)}-(scored|aggregates|alerts)-\d{{4}}\.\d{{2}}\.\d{{2}}")
        assert indices and all(dated.fullmatch(name) for name in indices), indices

        report = finsent(pipeline.env, "report", "--run-id", f"run-{unique}", "--output", str(tmp_path / "reports"))
        assert report.returncode == 0, report.stderr
        summary = json.loads((tmp_path / "reports" / f"run-{unique}" / "summary.json").read_text())
        assert summary["labelled"] == 20
        topics = finsent(pipeline.env, "topics")
        assert topics.returncode == 0 and pipeline.env["FINSENT_TOPIC_RAW"] in topics.stdout, topics.stderr
        metrics = worker.metrics_text()
    finally:
        pipeline.stop_all()

    written = [worker.log.read_text(errors="replace"), metrics, json.dumps(letters)]
    written += [p.stdout + p.stderr for p in (created, replay, report, topics)]
    written += [
        f.read_text(errors="replace") for f in (tmp_path / "reports").rglob("*") if f.suffix in (".html", ".json")
    ]
    for secret in SECRETS:
        assert not any(secret in text for text in written), f"{secret!r} leaked"


@pytest.mark.parametrize("what", ["wrong password", "no client certificate", "plaintext to a TLS listener"])
def test_refused_kafka_connections_fail_clearly_without_echoing_the_secret(secured, what, tmp_path):
    kafka, _ = secured
    env = kafka.client_env(
        {
            "wrong password": "sasl_ssl-scram",
            "no client certificate": "mtls",
            "plaintext to a TLS listener": "sasl_ssl-plain",
        }[what]
    )
    if what == "wrong password":
        env["FINSENT_KAFKA_SASL_PASSWORD"] = "not-the-password-4411"
    elif what == "no client certificate":
        for key in ("FINSENT_KAFKA_SSL_CERTFILE", "FINSENT_KAFKA_SSL_KEYFILE", "FINSENT_KAFKA_SSL_KEYFILE_PASSWORD"):
            env.pop(key)
    else:
        env["FINSENT_KAFKA_SECURITY_PROTOCOL"] = "SASL_PLAINTEXT"
    env["FINSENT_TOPIC_RAW"] = f"refused-{tmp_path.name}"
    source = tmp_path / "one.jsonl"
    source.write_text('{"text": "Profit rose"}\n')
    result = finsent(env, "replay", str(source))
    assert result.returncode == 1
    assert f"cannot use Kafka at {env['FINSENT_KAFKA_BOOTSTRAP_SERVERS']}" in result.stderr
    for secret in (*SECRETS, "not-the-password-4411"):
        assert secret not in result.stdout + result.stderr


def test_refused_elasticsearch_credentials_fail_clearly_without_echoing_them(secured, tmp_path):
    _, es = secured
    for auth in (
        {"FINSENT_ES_USERNAME": "finsent-admin", "FINSENT_ES_PASSWORD": "wrong-es-pw-8812"},
        {"FINSENT_ES_API_KEY": "bm90LWEta2V5Om5vdC1hLXNlY3JldA=="},
    ):
        env = {"FINSENT_ES_HOSTS": es.url, "FINSENT_ES_CA_CERTS": str(es.certs.ca), **auth}
        result = finsent(env, "report", "--run-id", "nothing", "--output", str(tmp_path))
        assert result.returncode == 1
        assert f"cannot use Elasticsearch at {es.url}" in result.stderr and "HTTP 401" in result.stderr
        assert not any(value in result.stdout + result.stderr for value in auth.values() if value != "finsent-admin")
    # and an untrusted certificate is refused before any credential is sent
    result = finsent(
        {"FINSENT_ES_HOSTS": es.url, "FINSENT_ES_USERNAME": "finsent-admin", "FINSENT_ES_PASSWORD": ES_PASSWORD},
        "report",
        "--run-id",
        "nothing",
        "--output",
        str(tmp_path),
    )
    assert result.returncode == 1 and "cannot reach Elasticsearch" in result.stderr
    assert ES_PASSWORD not in result.stdout + result.stderr


def test_basic_auth_and_ca_file_reach_the_secured_node(secured):
    _, es = secured
    client = Elasticsearch(es.url, ca_certs=str(es.certs.ca), basic_auth=("finsent-admin", ES_PASSWORD))
    assert client.security.authenticate()["username"] == "finsent-admin"


def test_a_rotated_elasticsearch_password_pauses_the_stream_and_dead_letters_nothing(
    secured, tiny_bundle, tmp_path, unique
):
    """A password changed under a running worker is an outage (backpressure, nothing committed,
    nothing dead-lettered); once its secret file holds the new password, the stream resumes."""
    _, es = secured
    user, old_password, new_password = f"rot{unique}", "first-pw-5521", "second-pw-7730"
    es.set_file_user(user, old_password)
    wait_for(lambda: es.authenticates(user, old_password), 60, "the node to know the new user")
    secret = tmp_path / "es_password"
    secret.write_text(old_password + "\n")
    env = {
        "FINSENT_ES_HOSTS": es.url,
        "FINSENT_ES_CA_CERTS": str(es.certs.ca),
        "FINSENT_ES_USERNAME": user,
        "FINSENT_ES_PASSWORD_FILE": str(secret),
        "FINSENT_ES_RETRY_MAX_BACKOFF_S": "2",
    }
    pipeline = Pipeline(name=f"rot{unique}", bundle=tiny_bundle, workdir=tmp_path, extra_env=env)
    messages = [json.dumps({"id": f"m-{i}", "text": f"Operating profit rose {i} %"}).encode() for i in range(60)]
    worker = pipeline.start_worker(0)
    try:
        pipeline.produce(messages[:20])
        pipeline.wait_indexed(20)
        es.set_file_user(user, new_password)  # rotated under the running worker
        wait_for(lambda: not es.authenticates(user, old_password), 60, "the node to refuse the old password")
        pipeline.produce(messages[20:])
        wait_for(lambda: worker.metric("finsent_es_backpressure") == 1, 60, "backpressure after the rotation")
        es.request("POST", f"/{pipeline.name}-scored/_refresh")  # as the admin: the worker's password is stale
        assert es.request("GET", f"/{pipeline.name}-scored/_count")["count"] == 20
        secret.write_text(new_password + "\n")  # the operator updates the mounted secret
        assert sorted(pipeline.wait_indexed(60)) == sorted(f"m-{i}" for i in range(60))
        wait_for(lambda: worker.metric("finsent_es_backpressure") == 0, 30, "backpressure to clear")
        assert worker.metric("finsent_messages_total", outcome="dead_letter") == 0
        assert worker.metric("finsent_messages_total", outcome="scored") == 60
        assert worker.process.poll() is None, "the worker died"
    finally:
        pipeline.stop_all()
    log = worker.log.read_text(errors="replace")
    assert old_password not in log and new_password not in log

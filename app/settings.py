"""Service configuration: one ``Settings`` class, read from ``ICSEG_*`` environment variables."""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ASCII_SPACE = " \t\n\r\x0b\x0c"  # what is stripped from keys and tokens; a non-breaking space is not
ADMIN = "admin"  # the tenant name of ICSEG_ADMIN_KEY: it sees every tenant's prompts and jobs


def parse_keys(entries: list[str], keys_file: Path | None, admin_key: str | None) -> dict[str, str]:
    """key -> tenant from ``name:key`` entries (a bare key is the tenant ``key-<n>``), a keys file and the admin key.

    Raises:
        ValueError: an empty key or tenant name, a key given twice, a keys file that is unreadable or holds no key.
    """
    lines = list(entries)
    if keys_file is not None:
        try:
            text = Path(keys_file).read_text()
        except OSError as exc:
            raise ValueError(f"ICSEG_API_KEYS_FILE cannot be read: {exc.strerror or exc}") from None
        found = [ln.strip(ASCII_SPACE) for ln in text.splitlines()]
        found = [ln for ln in found if ln and not ln.startswith("#")]
        if not found:
            raise ValueError("ICSEG_API_KEYS_FILE holds no key")
        lines += found
    tenants: dict[str, str] = {}
    for n, entry in enumerate(lines, 1):
        name, sep, key = entry.partition(":")
        name, key = (name.strip(ASCII_SPACE), key.strip(ASCII_SPACE)) if sep else (f"key-{n}", entry)
        if not key or not name:
            raise ValueError(f"API key entry {n} has an empty tenant name or key; write tenant:key")
        if key in tenants:
            raise ValueError(f"API key entry {n} repeats a key")
        tenants[key] = name
    if admin_key is not None:
        admin_key = admin_key.strip(ASCII_SPACE)
        if not admin_key or admin_key in tenants:
            raise ValueError("ICSEG_ADMIN_KEY is empty or also a tenant's key")
        tenants[admin_key] = ADMIN
    return tenants


def _default_data_dir() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "icseg"


class Settings(BaseSettings):
    """Every knob of the service. Environment variable = ``ICSEG_`` + the upper-case field name."""

    model_config = SettingsConfigDict(env_prefix="ICSEG_", extra="ignore", frozen=True)

    weights: Path | None = Field(
        None,
        description="weights file: an icseg .safetensors checkpoint or an official UniverSeg v1 .pt. "
        "Unset: the embedded default model (the server stays unready when there is none)",
    )
    device: str = Field("cpu", description="torch device for the model: cpu, cuda, cuda:1, mps")
    torch_threads: int | None = Field(None, ge=1, description="torch intra-op threads (unset: torch's default)")
    data_dir: Path = Field(
        default_factory=_default_data_dir, description="directory of the prompt store and job results"
    )
    redis_url: str | None = Field(
        None, description="redis://host:port/db; set: prompts live in Redis, shared by every replica"
    )
    redis_prefix: str = Field("icseg", description="key prefix in Redis")
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated tenant:key pairs (a bare key is its own tenant); set: every route but "
        "/healthz and /readyz needs a key, and each tenant sees only its own prompts and jobs",
    )
    api_keys_file: Path | None = Field(
        None, description="a file of tenant:key lines (# comments), read at start; joins ICSEG_API_KEYS"
    )
    admin_key: str | None = Field(
        None, description="a key that lists, reads and deletes every tenant's prompts and jobs (tenant 'admin')"
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated browser origins allowed by CORS (unset: none)"
    )
    docs: bool = Field(True, description="serve /docs and /openapi.json (they hold no data and need no key)")
    max_support: int = Field(64, ge=1, description="most support items the model takes at once for one query "
                             "(capped by the model's); from a larger set (a prompt) each query uses support_size "
                             "items, chosen by select")
    max_prompt_support: int = Field(
        512, ge=1, description="most support items a stored prompt (or an inline support set) may hold; the model "
        "takes at most ICSEG_MAX_SUPPORT of them per query (select=similar|random, support_size)")
    max_labels: int = Field(
        32, ge=1, description="most distinct labels in a support set (each label is one pass of the model)"
    )
    max_upload_mb: float = Field(200.0, gt=0, description="largest request body in MB")
    max_pixels: int = Field(40_000_000, ge=1, description="most pixels in one 2D image (decompression bombs)")
    max_voxels: int = Field(150_000_000, ge=1, description="most voxels in one volume")
    sync_max_voxels: int = Field(
        8_000_000, ge=0, description="largest volume /segment answers synchronously; larger ones go to /jobs"
    )
    sync_max_work: int = Field(
        2048, ge=1, description="most model work /segment runs: query units (1 for 2D, slices for a volume) x "
        "labels x support size x ensemble; more: 413 use_jobs")
    job_max_work: int = Field(262_144, ge=1, description="most model work of one job (same units)")
    sync_max_mb: float = Field(
        1024.0, gt=0, description="memory budget of one /segment, estimated from the headers: decoded inputs, "
        "their float copies and one probability map per label at the query's size")
    job_max_mb: float = Field(1536.0, gt=0, description="memory budget of one job (same estimate)")
    shutdown_grace_s: float = Field(
        8.0, ge=0, description="on SIGTERM: new requests get 503; running ones are cancelled after this long")
    request_timeout_s: float = Field(300.0, gt=0, description="longest a synchronous /segment waits for the model")
    queue_size: int = Field(
        32, ge=1, description="requests waiting for the model beyond the pass that runs; more get 429 at once"
    )
    batch_max_queries: int = Field(16, ge=1, description="most queries against one prompt in one forward pass")
    batch_wait_ms: float = Field(
        0.0, ge=0, description="extra wait to gather a micro-batch; 0 batches what queued during the last pass"
    )
    prompt_ttl_s: int = Field(7 * 24 * 3600, ge=0, description="seconds a stored prompt lives (0: forever)")
    prompt_store_mb: float = Field(1024.0, gt=0, description="total size of stored prompts; oldest evicted first")
    job_workers: int = Field(1, ge=1, description="volume jobs running at once")
    job_queue_size: int = Field(8, ge=0, description="jobs waiting beyond the running ones; more get 429")
    job_result_ttl_s: int = Field(3600, ge=1, description="seconds a finished job and its result are kept")
    sweep_interval_s: float = Field(60.0, gt=0, description="how often expired prompts and jobs are removed")

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_commas(cls, value):
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value):
        if isinstance(value, str):
            parts = [part.strip(ASCII_SPACE) for part in value.split(",")]
            keys = [part for part in parts if part]
            if value and not keys:  # " , " would turn authentication off silently; only "" means unset
                raise ValueError("ICSEG_API_KEYS holds no key; unset it or give tenant:key pairs")
            return keys
        return value

    @model_validator(mode="after")
    def _keys_parse(self):
        self.tenants  # noqa: B018 - raises on a malformed entry or keys file, at start-up
        return self

    @cached_property
    def tenants(self) -> dict[str, str]:
        """key -> tenant name; empty when no key is configured (then nothing is separated)."""
        return parse_keys(self.api_keys, self.api_keys_file, self.admin_key)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


def settings_help() -> str:
    """One line per setting for ``icseg serve --help``."""
    lines = ["settings (environment variables):"]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, list):
            default = ",".join(default) or "(unset)"
        elif default is None:
            default = "(unset)"
        lines.append(f"  ICSEG_{name.upper():<22} {field.description} [default: {default}]")
    return "\n".join(lines)

"""Site configuration: the tower's settings, its HTTP API, and the queues it may submit workers to.

A YAML file validated with pydantic (``extra="forbid"``): a typo names the key, the file and the line.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .provisioner import QueueConfig
from .tower import TowerConfig
from .workload import _key_lines, format_validation_error


class SiteError(ValueError):
    """A site configuration is malformed."""


class ApiConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bind: str | None = Field(default="127.0.0.1:0", description="host:port of the HTTP API; null: none")


class SiteConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "site"
    tower: TowerConfig = Field(default_factory=TowerConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    queues: list[QueueConfig] = Field(default_factory=lambda: [QueueConfig()])
    provision_interval_s: float = Field(default=5.0, gt=0)


def parse_site(text: str, source: str = "<site>") -> SiteConfig:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise SiteError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise SiteError(f"{source}: a site config is a mapping")
    try:
        return SiteConfig.model_validate(data)
    except ValidationError as exc:
        raise SiteError(format_validation_error(exc, source, _key_lines(node))) from exc


def load_site(path: str | Path) -> SiteConfig:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SiteError(f"{path}: cannot read: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise SiteError(f"{path}: not a text (UTF-8) file: {exc.reason} at byte {exc.start}") from exc
    return parse_site(text, str(path))

"""Settings, built once in ``main()`` from the environment (``AUDITOR_*``), grouped and documented.

Nested groups use ``__``: ``AUDITOR_LOGGING__LEVEL=debug``. Invalid values are input errors (exit
2) that name the variable. The daemon's groups (schedule, Slack, AWS) join here later.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from auditor.errors import InputError


class LoggingSettings(BaseModel):
    level: Literal["debug", "info", "warning", "error"] = Field(
        default="warning",
        description="Log level. warning keeps `auditor check` output clean; logs go to stderr.",
    )
    format: Literal["console", "json"] = Field(
        default="console",
        description="console for people, json for log pipelines (one object per line).",
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AUDITOR_", env_nested_delimiter="__", extra="ignore")

    logging: LoggingSettings = Field(default_factory=LoggingSettings)


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as error:
        first = error.errors()[0]
        variable = "AUDITOR_" + "__".join(str(p) for p in first["loc"]).upper()
        raise InputError(
            "environment",
            first["msg"],
            field=variable,
            fix="see docs/settings.md for allowed values",
        ) from error

"""MQTT connection settings: the `mqtt:` section of rules.yaml.

Credentials never appear in the file itself: the password comes from an environment
variable or a file (systemd `LoadCredential=` puts it under `$CREDENTIALS_DIRECTORY`), so
rules.yaml can be shared or committed without leaking anything.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from claudio_daemon.config_base import StrictModel
from claudio_daemon.rules.secrets import (
    PLAIN_SECRET_HELP,
    check_env_name,
    is_env_name,
    resolve_secret,
)

_TOPIC_LEVELS = re.compile(r"^[^#+\x00]+$")
_NODE_ID = re.compile(r"^[A-Za-z0-9_-]+$")


def _default_client_id() -> str:
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname()) or "host"
    return f"claudio-{host}"


class TlsSettings(StrictModel):
    """TLS towards the broker (port 8883 usually)."""

    enabled: bool = Field(False, description="Encrypt the connection with TLS.")
    ca_file: Path | None = Field(
        None, description="CA bundle that signed the broker's certificate; system CAs if unset."
    )
    cert_file: Path | None = Field(None, description="Client certificate for mutual TLS.")
    key_file: Path | None = Field(None, description="Private key of the client certificate.")
    insecure: bool = Field(
        False,
        description="Skip the broker host name check. Only for testing: it allows MITM.",
    )

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> TlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("tls.cert_file and tls.key_file must be given together")
        return self


class DiscoverySettings(StrictModel):
    """Home Assistant MQTT discovery."""

    enabled: bool = Field(True, description="Announce Claudio's entities to Home Assistant.")
    prefix: str = Field(
        "homeassistant", min_length=1, description="Home Assistant's discovery prefix."
    )
    node_id: str | None = Field(
        None,
        description="Id used in discovery topics and unique ids; derived from client_id if unset.",
    )

    @field_validator("prefix")
    @classmethod
    def _prefix_is_topic(cls, v: str) -> str:
        return _check_prefix(v, "discovery.prefix")

    @field_validator("node_id")
    @classmethod
    def _node_id_chars(cls, v: str | None) -> str | None:
        if v is not None and not _NODE_ID.match(v):
            raise ValueError("discovery.node_id may only hold letters, digits, '_' and '-'")
        return v


def _check_prefix(v: str, name: str) -> str:
    if not v or not _TOPIC_LEVELS.match(v) or v.startswith("/") or v.endswith("/"):
        raise ValueError(
            f"{name} {v!r} must be a plain topic without wildcards (+ #) or leading/trailing '/'"
        )
    return v


class _Hidden:
    """Stands in for a value that must not appear in an error message."""

    def __repr__(self) -> str:
        return "<hidden>"


class MqttSettings(StrictModel):
    """Where and how Claudio talks MQTT."""

    host: str = Field("localhost", min_length=1, description="Broker host name or address.")
    port: int = Field(1883, ge=1, le=65535, description="Broker port (8883 for TLS usually).")
    client_id: str = Field(
        default_factory=_default_client_id,
        min_length=1,
        max_length=128,
        description="MQTT client id; must be unique on the broker.",
    )
    protocol: Literal["3.1.1", "5"] = Field("3.1.1", description="MQTT protocol version.")
    topic_prefix: str = Field("claudio", description="Prefix of every topic Claudio owns.")
    username: str | None = Field(None, min_length=1, description="Broker user name.")
    password_env: str | None = Field(
        None, min_length=1, description="Name of the environment variable holding the password."
    )
    password_file: Path | None = Field(
        None,
        description="File holding the password; ${CREDENTIALS_DIRECTORY} is expanded "
        "(systemd LoadCredential=).",
    )
    tls: TlsSettings = Field(default_factory=TlsSettings)
    keepalive_s: int = Field(60, ge=5, le=3600, description="MQTT keepalive in seconds.")
    qos: Literal[0, 1, 2] = Field(1, description="QoS of everything Claudio publishes.")
    queue_max: int = Field(
        1000, ge=10, le=1_000_000, description="Messages kept while the broker is unreachable."
    )
    command_max_age_s: float | None = Field(
        120.0,
        ge=1.0,
        le=86400.0,
        description="A device command the broker has not taken within this many seconds "
        "(broker unreachable) is dropped, not sent late: claps for the lamp ten minutes ago "
        "must not switch it now. null keeps commands until they are delivered.",
    )
    reconnect_min_s: float = Field(1.0, gt=0, le=300, description="First reconnect delay.")
    reconnect_max_s: float = Field(60.0, gt=0, le=3600, description="Longest reconnect delay.")
    discovery: DiscoverySettings = Field(default_factory=DiscoverySettings)

    #: Only here to reject a plain password with a helpful message at the right YAML key.
    plain_password: None = Field(None, alias="password", exclude=True, repr=False)

    @model_validator(mode="before")
    @classmethod
    def _redact_password(cls, data: Any) -> Any:
        # Validation errors echo the input; never let a password reach the logs.
        if not isinstance(data, dict):
            return data
        if data.get("password") is not None:
            data = {**data, "password": "<redacted>"}
        # Not a variable name: most likely the password itself, pasted into password_env.
        env = data.get("password_env")
        if isinstance(env, str) and env and not is_env_name(env):
            data = {**data, "password_env": "<redacted>"}
        # A number where a name or path belongs is a PIN-like password YAML read unquoted:
        # it fails as "not a string" without the value (errors echo only plain values).
        for key in ("password_env", "password_file"):
            value = data.get(key)
            if value is not None and not isinstance(value, str):
                data = {**data, key: _Hidden()}
        return data

    @field_validator("plain_password", mode="before")
    @classmethod
    def _no_plain_password(cls, v: Any) -> None:
        if v is not None:
            raise ValueError(PLAIN_SECRET_HELP)
        return None

    @field_validator("password_env")
    @classmethod
    def _env_is_a_name(cls, v: str | None) -> str | None:
        return None if v is None else check_env_name(v)

    @field_validator("topic_prefix")
    @classmethod
    def _prefix_is_topic(cls, v: str) -> str:
        return _check_prefix(v, "topic_prefix")

    @model_validator(mode="after")
    def _consistent(self) -> MqttSettings:
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError("reconnect_min_s must not exceed reconnect_max_s")
        if (self.password_env or self.password_file) and not self.username:
            raise ValueError("password_env/password_file need a username")
        return self

    @property
    def node_id(self) -> str:
        """Id in Home Assistant discovery topics and unique ids."""
        if self.discovery.node_id:
            return self.discovery.node_id
        return re.sub(r"[^A-Za-z0-9_-]", "_", self.client_id)

    def password(self) -> str | None:
        """The broker password, read now (not at load time) so a rotated secret is picked up.

        Raises SecretError (a ValueError) naming the variable or file when a source is
        configured but yields nothing: connecting without it would only fail later with a
        vaguer "not authorised".
        """
        return resolve_secret(self.password_env, self.password_file)

"""Secrets (the MQTT password) come from the environment or a file, never from rules.yaml.

rules.yaml is meant to be shared, diffed and committed; a password in it would leak with it.
systemd's `LoadCredential=` puts a secret in a file under `$CREDENTIALS_DIRECTORY`, readable
only by the service, so file paths may name that variable.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

#: Largest secret file we read: anything bigger is a wrong path, not a password.
MAX_SECRET_BYTES = 4096

#: Keys that must never hold a plain value in rules.yaml.
PLAIN_SECRET_KEYS = frozenset({"password", "passwd", "secret", "token", "api_key"})

PLAIN_SECRET_HELP = (
    "a plain-text secret is not allowed in rules.yaml; use password_env: NAME_OF_ENV_VAR "
    "(e.g. CLAUDIO_MQTT_PASSWORD, set in the service's environment) or password_file: PATH "
    "(e.g. ${CREDENTIALS_DIRECTORY}/mqtt-password with systemd LoadCredential=)"
)

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_VAR = re.compile(r"\$(?:\{([^}]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


class SecretError(ValueError):
    """A configured secret source is missing, unreadable or malformed (the message names it)."""


def is_env_name(name: str) -> bool:
    """True for a plausible environment variable name (letters, digits, '_'; no leading digit)."""
    return bool(_ENV_NAME.match(name))


def check_env_name(name: str) -> str:
    """An environment variable *name*, not a value: catches a password pasted into password_env.

    The message never quotes the value: when this fails, it most likely *is* the password.
    """
    if not is_env_name(name):
        raise SecretError(
            "password_env is not an environment variable name (letters, digits and '_'); it "
            "holds the variable's name, not the password (value not shown in case it is one)"
        )
    return name


def _env_shown(name: str) -> str:
    """How an unset password_env variable is named in an error: a name with lower-case
    letters ("Sommer2024") may be the password itself, pasted in, and errors reach the
    journal; conventional names (CLAUDIO_MQTT_PASSWORD) are shown."""
    if name.upper() == name:
        return f"environment variable {name}"
    return (
        "the environment variable named in password_env (name not shown: it has lower-case "
        "letters, as a password would; variable names are written like CLAUDIO_MQTT_PASSWORD)"
    )


def expand_path(path: Path | str) -> Path:
    """Expand `${VAR}`, `$VAR` and `~`; an unset variable is an error, not a literal '$'.

    systemd may hand a colon-separated list in *_DIRECTORY variables; the first entry is
    the service's own directory.
    """

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) if m.group(1) is not None else m.group(2)
        value = os.environ.get(name)
        if not value:
            hint = (
                " (set by systemd when the unit has LoadCredential=)"
                if name == "CREDENTIALS_DIRECTORY"
                else ""
            )
            raise SecretError(f"path {str(path)!r}: environment variable {name} is not set{hint}")
        if name.endswith("_DIRECTORY"):
            value = value.split(":")[0]
        return value

    return Path(_VAR.sub(sub, str(path))).expanduser()


def read_secret_file(path: Path | str) -> str:
    """The file's text without the trailing newline; errors name the file."""
    file = expand_path(path)
    try:
        with open(file, "rb") as f:
            raw = f.read(MAX_SECRET_BYTES + 1)
    except FileNotFoundError as e:
        raise SecretError(f"secret file {file} does not exist") from e
    except OSError as e:
        raise SecretError(f"secret file {file}: {e.strerror}") from e
    if len(raw) > MAX_SECRET_BYTES:
        raise SecretError(f"secret file {file} is larger than {MAX_SECRET_BYTES} bytes")
    try:
        value = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as e:
        raise SecretError(f"secret file {file} is not UTF-8 text") from e
    if not value:
        raise SecretError(f"secret file {file} is empty")
    return value


def resolve_secret(env: str | None, file: Path | str | None) -> str | None:
    """The secret from `env` (checked first, easy to override) or else `file`.

    None when neither source is configured (no password). When a source is configured but
    yields nothing, raise SecretError naming what is missing: connecting without the
    password would only fail later with a vaguer "not authorised".
    """
    if env is None and file is None:
        return None
    if env is not None:
        check_env_name(env)
        value = os.environ.get(env)
        if value:
            return value
        if file is None:
            raise SecretError(f"{_env_shown(env)} is not set (or empty)")
    assert file is not None
    try:
        return read_secret_file(file)
    except SecretError as e:
        if env is not None:
            raise SecretError(f"{_env_shown(env)} is not set and {e}") from e
        raise

"""Exceptions of the devices package."""

from __future__ import annotations

from pathlib import Path


class DevicesError(Exception):
    """Base of every error raised by `devices`."""


class ProfileError(DevicesError):
    """A profile file is unreadable or invalid.

    `problems` holds one `(field, message)` pair per problem so callers can
    report them all at once; `str()` names the file, each field and what to do.
    """

    def __init__(self, path: Path | str, problems: list[tuple[str, str]]) -> None:
        self.path = Path(path)
        self.problems = problems
        lines = [f"{self.path}: {len(problems)} problem(s) in device profile"]
        lines += [f"  {field or '(file)'}: {message}" for field, message in problems]
        super().__init__("\n".join(lines))


class RegistryError(DevicesError):
    """A registry file cannot be read at all (bad rows are reported, not raised)."""


class DecodeError(DevicesError):
    """A payload cannot be decoded; `reason` is a dead-letter reason code."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        self.message = message
        super().__init__(f"{reason}: {message}")

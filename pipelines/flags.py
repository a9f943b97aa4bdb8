"""Strict parsing of yes/no pipeline parameters.

A KFP parameter or a params.yaml value can arrive as the string "false"; `bool("false")` is True, which once
made `require_audio: "false"` require audio. Only real booleans and the words true/false are accepted.
"""

from __future__ import annotations

from xkd.errors import UsageError


def strict_bool(value, name: str) -> bool:
    """`value` as a bool: True/False, or "true"/"false" (any case, surrounding spaces ignored); else UsageError."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise UsageError(f"{name} must be true or false, got {value!r}")

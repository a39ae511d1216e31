"""The report of an audit: each check a named ``Check`` that passed or failed, and the one line
a failure prints (what differs, the first few differences named)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

MAX_DIFFERENCES_SHOWN = 5


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""  # for a failure: what differs; for a pass: what was checked


@dataclass
class VerifyReport:
    reference: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    def add(self, name: str, ok: bool, detail: str = "") -> Check:
        check = Check(name, ok, detail)
        self.checks.append(check)
        return check

    def to_dict(self) -> dict:
        return {
            "reference": self.reference,
            "ok": self.ok,
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks],
        }


def differences(expected: dict[str, str], actual: dict[str, str]) -> list[str]:
    """Human lines for keys missing, added or with another value."""
    lines = []
    for key in sorted(set(expected) | set(actual)):
        if key not in actual:
            lines.append(f"{key} missing")
        elif key not in expected:
            lines.append(f"{key} added")
        elif expected[key] != actual[key]:
            lines.append(f"{key} differs")
    return lines


def summarise(lines: list[str]) -> str:
    shown = "; ".join(lines[:MAX_DIFFERENCES_SHOWN])
    more = len(lines) - MAX_DIFFERENCES_SHOWN
    return shown + (f"; and {more} more" if more > 0 else "")


def checks_of(function: Callable[..., None], *args: object) -> list[Check]:
    """The checks ``function(report, *args)`` adds, collected on their own (so independent
    checks can run on another thread and still be reported in a fixed order)."""
    part = VerifyReport("")
    function(part, *args)
    return part.checks

"""The versioned GX suites under ``expectations/`` (the single source of truth for the rules) and their outcomes."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobs.platform.config import PROJECT_ROOT

SUITES_DIR = PROJECT_ROOT / "expectations"


@dataclass
class Suite:
    name: str
    version: str
    expectations: list[dict[str, Any]]

    @classmethod
    def load(cls, service: str, level: str, suites_dir: Path = SUITES_DIR) -> Suite:
        data = json.loads((suites_dir / f"{service}_{level}.json").read_text())
        return cls(data["name"], data["meta"]["version"], data["expectations"])

    def rules(self) -> list[str]:
        return [e["meta"]["rule"] for e in self.expectations]


@dataclass
class RuleOutcome:
    rule: str
    success: bool
    unexpected_count: int | None
    reason: str
    observed: Any = None


@dataclass
class SuiteOutcome:
    suite: Suite
    rules: list[RuleOutcome] = field(default_factory=list)

    @property
    def failed(self) -> list[RuleOutcome]:
        return [r for r in self.rules if not r.success]

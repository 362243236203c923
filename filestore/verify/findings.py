"""The report of a check: each `Finding` (what is wrong with a path, and what `--repair` did
about it), and the `Report` of the run, with its text summary and its JSON."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from ..cache.reconcile import _is_utf8
from ..stats import size_text


@dataclasses.dataclass
class Finding:
    kind: str  # see the table in the package's docstring
    path: str
    detail: str  # what is wrong
    repair: str | None = None  # what --repair did about it (None: nothing)
    remote: str | None = None  # the remote the finding is about (remote-* kinds)

    def text(self) -> str:
        line = f"{self.kind}: {self.path}: {self.detail}"
        return line + (f"\n    repaired: {self.repair}" if self.repair else "")


@dataclasses.dataclass
class Report:
    remote: bool = False  # whether the remotes were compared
    remotes: list[str] = dataclasses.field(default_factory=list)  # their names
    repair: bool = False
    files: int = 0  # rows checked
    hashed: int = 0  # bytes hashed
    objects: int = 0  # remote objects listed
    kept_objects: int = 0  # unknown objects kept on purpose (upload.delete_delay = "never")
    findings: list[Finding] = dataclasses.field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.findings

    @property
    def repaired(self) -> int:
        return sum(1 for finding in self.findings if finding.repair)

    def add(self, kind: str, path: str, detail: str, repair: str | None = None,
            remote: str | None = None) -> None:
        """Record a finding about `path` (a name as found: printed as it can be)."""
        self.findings.append(Finding(kind, shown(path), detail, repair, remote))

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.clean,
            "summary": {"files": self.files, "hashed_bytes": self.hashed, "remote": self.remote,
                        "objects": self.objects if self.remote else None,
                        "remotes": self.remotes if self.remote else None,
                        "kept_objects": self.kept_objects, "problems": len(self.findings),
                        "repaired": self.repaired},
            "findings": [dataclasses.asdict(finding) for finding in self.findings],
        }

    def summary(self) -> str:
        checked = f"verify: {_count(self.files, 'file')} checked ({size_text(self.hashed)} hashed)"
        if self.remote:
            checked += f", {_count(self.objects, 'remote object')}"
            if len(self.remotes) > 1:
                checked += f" in {len(self.remotes)} remotes"
        if self.kept_objects:
            checked += (f" ({self.kept_objects:,} no file describes, kept as "
                        "upload.delete_delay = never asks)")
        if self.clean:
            return checked + ": all good"
        outcome = f"{checked}: {_count(len(self.findings), 'problem')}"
        if self.repair:
            return outcome + f", {self.repaired:,} repaired"
        return outcome + "; `filestore verify --repair` fixes what can be fixed safely"


def _count(n: int, thing: str) -> str:
    return f"{n:,} {thing}{'' if n == 1 else 's'}"


def shown(name: str) -> str:
    """A name as it can be printed and put in JSON (one that is not UTF-8 shows its escapes)."""
    return name if _is_utf8(name) else os.fsencode(name).decode("utf-8", "backslashreplace")

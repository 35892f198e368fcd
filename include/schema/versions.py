"""Versioned migration files, shared by the Postgres and the Cassandra runner.

A migration is `V<NNN>__<name>.sql` (or `.cql`), applied once, in version order; its SHA-256 is
recorded when it is applied. An applied file must not change: write a new version instead. The
one exception is a rewrite that leaves every database it was applied to as the new text would:
the new text then names the old checksum in a line `-- replaces checksum <sha256>`.

A Cassandra migration whose first line is `-- rebuilds sink tables` creates the data tables again
(Cassandra cannot change a primary key): cdc_setup then fills them from Postgres with a new snapshot.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

_NAME = re.compile(r"^V(\d{3,})__([a-z0-9_]+)\.(sql|cql)$")
_REPLACES = re.compile(r"^--\s*replaces checksum\s+([0-9a-f]{64})\s*$", re.MULTILINE)
REBUILDS_SINK = "-- rebuilds sink tables"


class MigrationError(RuntimeError):
    """A migration file is malformed, was changed after being applied, or failed to apply."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    @property
    def text(self) -> str:
        return self.path.read_text()

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()

    @property
    def rebuilds_sink(self) -> bool:
        """The migration creates the sink's data tables again: they must be filled from the source."""
        return self.text.splitlines()[0].strip() == REBUILDS_SINK if self.text else False

    def check_unchanged(self, applied_checksum: str) -> None:
        """Fail if the file differs from what was applied (unless it declares that text as replaced)."""
        if applied_checksum != self.checksum and applied_checksum not in _REPLACES.findall(self.text):
            raise MigrationError(f"{self.path.name} was changed after it was applied (checksum differs); "
                                 "add a new migration instead of editing an applied one")


def discover(folder: Path, suffix: str) -> list[Migration]:
    """The migrations of a folder, by version; a misnamed file or a version used twice is an error."""
    found = []
    for path in sorted(folder.glob(f"*.{suffix}")):
        m = _NAME.match(path.name)
        if not m or m.group(3) != suffix:
            raise MigrationError(f"{path}: migration files are named V<NNN>__<name>.{suffix}")
        found.append(Migration(int(m.group(1)), m.group(2), path))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"{folder}: two migrations share a version: {versions}")
    return sorted(found, key=lambda m: m.version)


def statements(text: str) -> list[str]:
    """Split a migration into statements on `;`, dropping `--` comments (CQL runs one at a time)."""
    lines = [line.split("--", 1)[0] for line in text.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]

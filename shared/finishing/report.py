"""The run report: what a run did, as a user reads it (JSON blob `runs/<export>/<run id>.json`)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

RunStatus = Literal["running", "succeeded", "partially_succeeded", "failed", "superseded"]


class JobSummary(BaseModel):
    id: str
    status: str = "queued"
    total: int = 0
    completed: int = 0
    failed: int = 0


class RunReport(BaseModel):
    export: str
    run_id: str
    status: RunStatus
    dry_run: bool = False
    mode: str = "upsert"
    trigger: str | None = None  # "blob" (an export landed), "http" (run now), "cli"
    list_id: str | None = None
    source: str | None = None
    entity: str | None = None
    rows_read: int = 0
    rows_rejected: int = 0
    duplicate_rows: int = 0
    profiles_submitted: int = 0
    profiles_unchanged: int = 0
    profiles_imported: int = 0
    profiles_failed: int = 0
    profiles_removed: int = 0
    profiles_subscribed: int = 0
    profiles_not_consented: int = 0
    mass_removal_override: bool = False
    max_reject_share: float | None = None  # the limit on rejected rows that applied
    reject_share_override: bool = False  # that limit was raised above the default (DEFAULT_MAX_REJECT_SHARE)
    bad_source: bool = False  # failed because the source cannot be read whole (nothing was sent)
    warnings: int = 0
    warning_kinds: dict[str, int] = Field(default_factory=dict)  # the warnings by what they say
    jobs: list[JobSummary] = Field(default_factory=list)
    rejects_sample: list[dict] = Field(default_factory=list)
    failures_sample: list[dict] = Field(default_factory=list)
    rejects_file: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    duration_s: float | None = None
    error: str | None = None
    # The webhook delivery, when the export's `notify` matched: url (redacted), delivered, attempts, error.
    notification: dict | None = None

    def check_counts(self) -> bool:
        """rows_read = rows_rejected + duplicate_rows + unique profiles (sent or unchanged)."""
        unique = self.profiles_submitted + self.profiles_unchanged
        return self.rows_read == self.rows_rejected + self.duplicate_rows + unique

    def count_problems(self) -> list[str]:
        """The report's counts that contradict each other (none, unless something drove the run twice)."""
        problems = []
        if not self.check_counts():
            problems.append(
                f"rows read {self.rows_read:,} != rejected {self.rows_rejected:,} + duplicates "
                f"{self.duplicate_rows:,} + submitted {self.profiles_submitted:,} + unchanged "
                f"{self.profiles_unchanged:,}"
            )
        if self.profiles_imported + self.profiles_failed > self.profiles_submitted:
            problems.append(
                f"imported {self.profiles_imported:,} + failed {self.profiles_failed:,} > submitted "
                f"{self.profiles_submitted:,}"
            )
        return problems

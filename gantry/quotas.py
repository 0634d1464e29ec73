"""Limits on unfinished jobs: per user, per algorithm and in all (grand-challenge's 16/16/128).

Each limit is a counter item moved in the same DynamoDB transaction as the job's own write:
+1, only while below the limit, when a counted job is stored; -1 when it reaches a terminal
state (a conditional write that happens once per job). So concurrent creates cannot pass a
limit, and every way a job ends (success, failure, validation failure, cancel, sweeper) frees
its slot.
"""

from __future__ import annotations

from dataclasses import dataclass

from gantry.settings import Settings

# A job waits this long, typically, before a slot frees: the answer's Retry-After.
RETRY_AFTER_SECONDS = 60


@dataclass(frozen=True)
class Limit:
    scope: str  # the counter's key: "USER#alice", "ALG#<pk>", "TOTAL"
    limit: int
    description: str  # names the limit in the refusal

    def refusal(self) -> str:
        return (
            f"Too many unfinished jobs: the limit of {self.limit} {self.description} is "
            "reached; try again when one of them has finished"
        )


def scopes(creator: str, algorithm_pk: str) -> tuple[str, str, str]:
    """The counters a job of ``creator`` on the algorithm counts in."""
    return f"USER#{creator}", f"ALG#{algorithm_pk}", "TOTAL"


def limits_for(settings: Settings, creator: str, algorithm_pk: str) -> list[Limit]:
    """The limits a job of ``creator`` on the algorithm counts against."""
    user, algorithm, total = scopes(creator, algorithm_pk)
    return [
        Limit(user, settings.max_active_jobs_per_user, "active jobs per user"),
        Limit(algorithm, settings.max_active_jobs_per_algorithm, "active jobs per algorithm"),
        Limit(total, settings.max_active_jobs, "active jobs on this platform"),
    ]

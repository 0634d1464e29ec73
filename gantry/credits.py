"""Monthly credits: each user gets ``monthly_credits`` a calendar month (UTC); a job costs
credits by what it may use, as grand-challenge charges.

A job's cost is its worst case: the algorithm's time limit on the instance its GPU type runs
on, priced in US cents an hour, converted at ``monthly_credits`` per ``monthly_credit_cents``,
rounded to tens; at least ``monthly_credits / max_jobs_per_month`` and at least the
algorithm's ``minimum_credits_per_job``. The algorithm's creator and editors run each of its
images ``complimentary_editor_jobs`` times free (all editors together, as grand-challenge:
enough to try a new image); beyond that their jobs cost credits like anyone's. The free jobs
are a counter per algorithm image (``COMPLIMENTARY#ALGIMG#<pk>``), taken in the job's create
transaction only while below the cap.

Spending is a counter item per user and month (``CREDITS#USER#<name>``, sort key
``YYYY-MM``) moved in the job's own create transaction, only while enough is left, so
concurrent creates cannot overspend, and a new month starts a new counter (no reset job).
Credits are not given back when a job fails or is cancelled: the cost is the time reserved
for it when it was accepted (grand-challenge does not refund either).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from gantry import access
from gantry.algorithms import Algorithm, GPUType
from gantry.errors import ValidationFailed
from gantry.settings import Settings
from gantry.users import User

# On-demand US cents an hour of the instance each GPU type runs on (us-east-1): m5.large,
# g4dn.xlarge, g5.xlarge, p4d.24xlarge.
CENTS_PER_HOUR: dict[GPUType, int] = {
    GPUType.NONE: 10,
    GPUType.T4: 53,
    GPUType.A10G: 101,
    GPUType.A100: 3277,
}


@dataclass(frozen=True)
class Charge:
    """What creating one job spends: ``cost`` credits of ``user``'s ``month``."""

    user: str
    month: str  # "YYYY-MM", UTC
    cost: int
    monthly: int
    # An editor's job: the algorithm image whose free jobs it takes first, and their number.
    complimentary_image: str | None = None
    complimentary_jobs: int = 0

    def refusal(self, spent: int) -> ValidationFailed:
        left = max(0, self.monthly - spent)
        return ValidationFailed(
            f"Not enough credits: a job of this algorithm costs {self.cost} credits and you "
            f"have {left} of your {self.monthly} monthly credits left; credits are renewed on "
            f"{next_month_start(self.month)}",
            field="credits",
            credits_left=left,
            credits_per_job=self.cost,
        )


def month_of(moment: datetime) -> str:
    return f"{moment.year:04d}-{moment.month:02d}"


def next_month_start(month: str) -> str:
    year, number = (int(part) for part in month.split("-"))
    year, number = (year + 1, 1) if number == 12 else (year, number + 1)
    return f"{year:04d}-{number:02d}-01"


def credits_per_job(settings: Settings, algorithm: Algorithm) -> int:
    """What a job of ``algorithm`` costs a user who is not one of its editors."""
    cents = algorithm.time_limit / 3600 * CENTS_PER_HOUR[algorithm.requires_gpu_type]
    by_use = int(round(cents * settings.monthly_credits / settings.monthly_credit_cents, -1))
    floor = -(-settings.monthly_credits // settings.max_jobs_per_month)  # ceiling division
    return max(algorithm.minimum_credits_per_job, by_use, floor)


def charge_for(
    settings: Settings, user: User, algorithm: Algorithm, image_pk: str, moment: datetime
) -> Charge:
    """What a job of ``user`` on ``algorithm``'s image ``image_pk`` spends."""
    editor = access.is_editor(user, algorithm)
    return Charge(
        user.username,
        month_of(moment),
        credits_per_job(settings, algorithm),
        settings.monthly_credits,
        complimentary_image=image_pk if editor else None,
        complimentary_jobs=settings.complimentary_editor_jobs if editor else 0,
    )

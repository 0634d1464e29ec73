"""users/me/ (a Gantry extension): who the caller is, their limits, unfinished jobs and
credits left this month."""

from __future__ import annotations

from aws_lambda_powertools.event_handler.router import APIGatewayRouter

from gantry import access, credits, quotas, timeutil
from gantry.context import Context
from gantry.users import User
from lambdas.api.deps import current_user


def build(ctx: Context) -> APIGatewayRouter:
    router = APIGatewayRouter()

    @router.get("/users/me/", summary="You: your limits, unfinished jobs and credits")
    def me() -> dict:
        user = current_user(router)
        settings = ctx.settings
        user_scope, _, total_scope = quotas.scopes(user.username, "")
        return {
            "username": user.username,
            "is_admin": user.is_admin,
            "limits": {
                "active_jobs_per_user": settings.max_active_jobs_per_user,
                "active_jobs_per_algorithm": settings.max_active_jobs_per_algorithm,
                "active_jobs": settings.max_active_jobs,
            },
            "active_jobs": ctx.store.jobs.active_count(user_scope),
            "active_jobs_on_platform": ctx.store.jobs.active_count(total_scope),
            "credits": _credits(user.username),
            "complimentary_editor_jobs_left": _free_jobs_left(user),
        }

    def _free_jobs_left(user: User) -> dict[str, int]:
        """Per image of the algorithms the user edits: free editor jobs left (shared by all
        its editors)."""
        algorithms, _ = ctx.store.algorithms.page_for(user.username, offset=0, limit=1000)
        cap = ctx.settings.complimentary_editor_jobs
        return {
            image.pk: max(0, cap - ctx.store.jobs.complimentary_jobs_taken(image.pk))
            for algorithm in algorithms
            if access.is_editor(user, algorithm)
            for image in ctx.store.algorithms.images_of(algorithm.pk)
        }

    def _credits(username: str) -> dict:
        month = credits.month_of(timeutil.now())
        monthly = ctx.settings.monthly_credits
        spent = ctx.store.jobs.credits_spent(username, month)
        return {
            "monthly": monthly,
            "spent": spent,
            "left": max(0, monthly - spent),
            "month": month,
            "renewed": credits.next_month_start(month),
        }

    return router

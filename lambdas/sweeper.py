"""Scheduled: reconcile jobs whose events were lost and start delayed jobs."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from gantry.pipeline.sweeper import sweep
from lambdas.runtime import context

logger = Logger(service="gantry-sweeper")


@logger.inject_lambda_context
def handler(event: dict[str, Any], lambda_context: LambdaContext) -> dict[str, Any]:
    report = sweep(context())
    logger.info("swept", extra=asdict(report))
    return asdict(report)

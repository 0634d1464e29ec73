"""What every Lambda entry point shares: the process's Context and SQS batch handling."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from gantry.context import Context

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

log = logging.getLogger(__name__)
_context: Context | None = None


def context(*, provision_on_queue: bool = False) -> Context:
    """The process's Context with the pipeline wired, built on first use, kept while warm.
    ``provision_on_queue``: ready jobs are provisioned by the uploads queue's handler (for the
    API, which must answer within API Gateway's 29 s)."""
    global _context
    if _context is None:
        from gantry.pipeline.wiring import install
        from gantry.settings import get_settings

        _context = install(Context.create(get_settings()), provision_on_queue=provision_on_queue)
    return _context


def process_sqs_batch(
    event: dict[str, Any],
    lambda_context: LambdaContext | None,
    handle_message: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    """Handle an SQS batch record by record, each body a JSON object; the response lists the
    ones to retry (batchItemFailures), so one bad record never makes the whole batch come
    back. A body that is not a JSON object fails its record (and ends in the DLQ)."""
    # Imported here: Powertools' batch utility loads its parser's models (about 60 modules),
    # which the API, whose cold start also imports this module, never needs.
    from aws_lambda_powertools.utilities.batch import (
        BatchProcessor,
        EventType,
        process_partial_response,
    )

    def record_handler(record: SQSRecord) -> None:
        try:
            message: Any = json.loads(record.body)
            if not isinstance(message, dict):
                raise ValueError("the message is not a JSON object")
            handle_message(message)
        except Exception as error:
            # Powertools logs a failed record's error at debug level only: say why it comes back
            # (a malformed message will again, until the DLQ takes it).
            log.warning("message %s failed: %s", record.message_id, error, exc_info=True)
            raise

    response = process_partial_response(
        event=event,
        record_handler=record_handler,
        processor=BatchProcessor(event_type=EventType.SQS),
        context=lambda_context,
    )
    return dict(response)


def unknown_message(message: dict[str, Any]) -> ValueError:
    """The error for a message no handler knows: it goes to the DLQ for someone to look at."""
    return ValueError(f"unknown message: {sorted(message)[:10]}")

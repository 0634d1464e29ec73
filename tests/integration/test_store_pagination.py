"""Limit/offset pages past DynamoDB's 1 MB/1000-item horizon, at O(page) cost."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

from gantry import timeutil
from gantry.context import Context
from gantry.job_states import JobStatus
from gantry.jobs import Job

TOTAL = 1150
pytestmark = pytest.mark.slow


@dataclass
class QueryMeter:
    """Counts DynamoDB Query calls and the items they read (ScannedCount), via botocore hooks."""

    calls: int = 0
    items_read: int = 0
    writes: int = 0

    def reset(self) -> None:
        self.calls = self.items_read = self.writes = 0

    def after_query(self, parsed: dict[str, Any], **_: Any) -> None:
        self.calls += 1
        self.items_read += int(parsed.get("ScannedCount", parsed.get("Count", 0)))

    def after_write(self, **_: Any) -> None:
        self.writes += 1


@pytest.fixture(scope="module")
def filled() -> Iterator[tuple[Context, list[str], QueryMeter]]:
    """One table with TOTAL jobs of alice (oldest first), shared by the module: filling is
    the slow part and every test only reads."""
    from moto import mock_aws

    from gantry.provision import ensure_data
    from gantry.settings import Settings

    with mock_aws():
        settings = Settings(table_name="pages", bucket_name="pages-data", region="us-east-1")
        ctx = Context.create(settings)
        ensure_data(ctx.clients, settings)
        # moto snapshots every table on each TransactWriteItems (O(table size)), which makes
        # filling quadratic; write the store's very items and count updates one by one.
        ctx.store.table.transact_put = _untransacted(ctx)  # type: ignore[method-assign]
        start = timeutil.now()
        pks = []
        for i in range(TOTAL):
            # Distinct, increasing creation times: the list order is the creation order.
            moment = timeutil.iso(start + timedelta(milliseconds=i))
            job = Job(
                pk=str(uuid.uuid4()),
                algorithm="alg-1",
                algorithm_image="img-1",
                creator="alice",
                status=JobStatus.PENDING,
                time_limit=600,
                created=moment,
                modified=moment,
            )
            ctx.store.jobs.create(job, input_images=[])
            pks.append(job.pk)
        del ctx.store.table.transact_put  # back to the real, transactional method
        meter = QueryMeter()
        events = ctx.clients.dynamodb_resource.meta.client.meta.events
        events.register("after-call.dynamodb.Query", meter.after_query)
        events.register("after-call.dynamodb.PutItem", meter.after_write)
        yield ctx, pks, meter


def _untransacted(ctx: Context) -> Callable[..., None]:
    table = ctx.store.table

    def transact_put(
        puts: Iterable[dict[str, Any]],
        *,
        unique: Iterable[dict[str, Any]] = (),
        updates: Iterable[dict[str, Any]] = (),
    ) -> None:
        for item in [*puts, *unique]:
            table.put(item)
        for update in updates:
            table._table.update_item(**update)

    return transact_put


def _clear_checkpoints(ctx: Context) -> None:
    from gantry.store import keys

    ctx.store.jobs.paginator.clear(keys.jobs_of("alice"))


def test_pages_of_1000_return_every_item_once_in_order(filled) -> None:
    ctx, pks, _ = filled
    _clear_checkpoints(ctx)
    first, count = ctx.store.jobs.page_for("alice", offset=0, limit=1000)
    second, count2 = ctx.store.jobs.page_for("alice", offset=1000, limit=1000)
    third, _ = ctx.store.jobs.page_for("alice", offset=2000, limit=1000)
    assert count == count2 == TOTAL
    assert [j.pk for j in first + second] == pks
    assert third == []


def test_gcapi_style_paging_returns_every_item_once_in_order(filled) -> None:
    # gcapi's iterate_all: limit=100, offset += 100, stop at the first empty page.
    ctx, pks, _ = filled
    _clear_checkpoints(ctx)
    seen: list[str] = []
    offset = 0
    while True:
        page, count = ctx.store.jobs.page_for("alice", offset=offset, limit=100)
        assert count == TOTAL
        if not page:
            break
        seen += [j.pk for j in page]
        offset += 100
    assert seen == pks


def test_the_algorithm_list_pages_the_same(filled) -> None:
    ctx, pks, _ = filled
    seen: list[str] = []
    for offset in range(0, TOTAL + 250, 250):
        page, count = ctx.store.jobs.page_for("alice", offset=offset, limit=250, algorithm="alg-1")
        assert count == TOTAL
        seen += [j.pk for j in page]
    assert seen == pks


def test_random_offset_jumps_land_on_the_right_items(filled) -> None:
    ctx, pks, _ = filled
    rng = random.Random(7)
    _clear_checkpoints(ctx)
    for _ in range(15):
        offset = rng.randrange(0, TOTAL + 20)
        limit = rng.choice([1, 7, 100, 333, 1000])
        page, _count = ctx.store.jobs.page_for("alice", offset=offset, limit=limit)
        assert [j.pk for j in page] == pks[offset : offset + limit], (offset, limit)


def test_offset_past_the_end_is_an_empty_page(filled) -> None:
    ctx, _, _ = filled
    _clear_checkpoints(ctx)
    assert ctx.store.jobs.page_for("alice", offset=TOTAL, limit=100) == ([], TOTAL)
    assert ctx.store.jobs.page_for("alice", offset=TOTAL + 5000, limit=100) == ([], TOTAL)


def test_sequential_page_cost_does_not_grow_with_offset(filled) -> None:
    ctx, pks, meter = filled
    _clear_checkpoints(ctx)
    costs: dict[int, tuple[int, int]] = {}
    for offset in range(0, TOTAL, 100):
        meter.reset()
        page, _ = ctx.store.jobs.page_for("alice", offset=offset, limit=100)
        assert [j.pk for j in page] == pks[offset : offset + 100]
        costs[offset] = (meter.calls, meter.items_read)
    shallow, deep = costs[100], costs[1000]
    # One checkpoint lookup and one page query, reading the page (and one checkpoint) only.
    assert deep == shallow, costs
    assert deep[0] <= 2, costs
    assert deep[1] <= 100 + 1, costs
    assert max(items for _, items in costs.values()) <= 101, costs


def test_a_deep_page_served_again_is_still_o_page(filled) -> None:
    # gcapi re-reads a page after a retry; the second read must not walk from the start.
    ctx, _, meter = filled
    _clear_checkpoints(ctx)
    for offset in range(0, 1100, 100):
        ctx.store.jobs.page_for("alice", offset=offset, limit=100)
    meter.reset()
    ctx.store.jobs.page_for("alice", offset=1000, limit=100)
    assert meter.items_read <= 101
    assert meter.writes <= 1


def test_a_random_jump_walks_keys_from_the_nearest_checkpoint_only(filled) -> None:
    ctx, pks, meter = filled
    _clear_checkpoints(ctx)
    for offset in range(0, 1000, 100):  # checkpoints at 100 .. 1000
        ctx.store.jobs.page_for("alice", offset=offset, limit=100)
    meter.reset()
    page, _ = ctx.store.jobs.page_for("alice", offset=1037, limit=10)
    assert [j.pk for j in page] == pks[1037:1047]
    # From the checkpoint at 1000: 37 keys walked, 10 read, 1 checkpoint looked up.
    assert meter.items_read <= 37 + 10 + 1, meter

"""Pipeline figures: the platform's own time per job, end to end on the embedded local stack.

``python -m benchmarks pipeline``. Jobs are created through the API handler (in-process), run
by the local compute backend (the real runner, its sandbox required, the default worker
count) and finished by the callback, all against the embedded AWS endpoint, in a fresh
stack. Each figure is taken twice in the same run, next to each other, so a busy machine
disturbs both alike: with each job's runner started as an interpreter of its own (as before
the warm runner) and forked from the warm runner (``batch_runner fork-server``, the default).

Two algorithms: the no-op example as a command from a folder (plus the one output every
algorithm must declare: the noop example alone writes nothing, so its jobs would end Failed
before the outputs are parsed), and the same as an OCI image (Debian's static busybox, its
shell writing that output), run from its root filesystem as the image's USER.

Printed per stage (median and p95), with the goals of one machine: created -> Succeeded
≤ 0.3 s one at a time, ≥ 5 jobs/s in a burst on 2 CPUs. Also the AWS requests per job, by
whom (the platform: API, provisioning, callback; the runner) and operation, counted at the
endpoint, and the CPU seconds per job of every process involved (this one, which holds the
API, the callback and the AWS endpoint, and the runners), the figure a busy machine
disturbs least.

Sizes by environment variables: ``GANTRY_BENCH_PIPELINE_JOBS`` (sequential jobs, default 15),
``GANTRY_BENCH_PIPELINE_BURST`` (jobs created at once, default 30),
``GANTRY_BENCH_PIPELINE_OCI_JOBS`` (sequential jobs of the image, default 10; 0 skips it),
``GANTRY_BENCH_PIPELINE_MODES`` (``process,fork`` by default; one of them alone to compare
nothing).
"""

from __future__ import annotations

import collections
import logging
import os
import resource
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.figures import local_credentials, percentile
from gantry.local.request_count import PLATFORM, POLLING_OPERATIONS, RequestCounter
from tests.noop_jobs import (
    NOOP_IMAGE,
    RUNNER_APP_ID,
    Finished,
    job_body,
    register_algorithm,
    register_sockets,
)

# A job that goes on after its first attempt is read this often until it ends.
POLL_SECONDS = 0.1
JOB_TIMEOUT_SECONDS = 120.0
# The same in an image: its shell writes the output.
IMAGE_COMMAND = ["/bin/sh", "-c", "echo 0 > /output/result.json"]
# The benchmark's own reads of the jobs it waits for are counted apart too (the runner's are,
# by RUNNER_APP_ID).
WATCHER_APP_ID = "gantry-bench-watcher"
MODES = {"process": "a runner per job", "fork": "warm runner"}
GOAL_SECONDS = 0.3
GOAL_JOBS_PER_SECOND = 5.0


@dataclass
class Timing:
    """One job's figures, in seconds."""

    create_call: float  # the POST, which provisions and submits the job before it returns
    client_wall: float  # from the POST until the callback has made the job final
    to_start: float  # created -> the runner process started (started_at)
    process: float  # the runner process, start to exit (its start-up included)
    runner: float  # the runner's own time: staging, algorithm, uploads, result
    algorithm: float  # the algorithm process alone
    callback: float  # the runner process exited -> the job is Succeeded
    total: float  # created -> completed_at, from the job's record


STAGES: list[tuple[str, Callable[[Timing], float]]] = [
    ("POST algorithms/jobs/ (provisions, submits)", lambda t: t.create_call),
    ("created -> runner process started", lambda t: t.to_start),
    ("runner process, start -> exit", lambda t: t.process),
    ("  of which before the runner's work", lambda t: t.process - t.runner),
    ("  of which the runner's work", lambda t: t.runner),
    ("    of which the algorithm (sandboxed)", lambda t: t.algorithm),
    ("runner exit -> Succeeded (callback)", lambda t: t.callback),
    ("created -> Succeeded (job record)", lambda t: t.total),
    ("POST -> callback has finished the job", lambda t: t.client_wall),
]


# --- AWS requests, counted at the endpoint ---------------------------------------------------


def _counter(app: Any) -> RequestCounter:
    """The endpoint's requests, the runners' and the benchmark's own reads counted apart."""
    return RequestCounter(app, app_ids=(RUNNER_APP_ID, WATCHER_APP_ID))


# --- CPU of every process involved -----------------------------------------------------------


@dataclass(frozen=True)
class Cpu:
    """CPU seconds (user + system): this process (the API, provisioning, the callback and the
    AWS endpoint) and the runners (with their sandboxes and algorithms)."""

    platform: float = 0.0
    runners: float = 0.0

    def __sub__(self, other: Cpu) -> Cpu:
        return Cpu(self.platform - other.platform, self.runners - other.runners)

    def __truediv__(self, jobs: int) -> Cpu:
        return Cpu(self.platform / jobs, self.runners / jobs)

    @property
    def total(self) -> float:
        return self.platform + self.runners


def _cpu(stack: Any) -> Cpu:
    """This process; its reaped children plus the warm runner and its reaped children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    runners = children.ru_utime + children.ru_stime
    forks = getattr(stack.ctx.compute_backend, "_forks", None)
    if forks is not None and forks.process.poll() is None:
        try:
            with open(f"/proc/{forks.process.pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            # utime, stime, cutime, cstime: fields 14-17 of stat(5), from the state (3) on.
            runners += sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")
        except OSError:
            pass
    return Cpu(own.ru_utime + own.ru_stime, runners)


# --- one job -------------------------------------------------------------------------------


def _seconds(start: str, end: str) -> float:
    from gantry import timeutil

    return (timeutil.parse_iso(end) - timeutil.parse_iso(start)).total_seconds()


def _watcher(stack: Any) -> Any:
    """A store of its own whose requests the endpoint counts apart (``WATCHER_APP_ID``)."""
    from botocore.config import Config

    from gantry.aws import Clients
    from gantry.store import Store

    clients = Clients(stack.settings)
    clients._config = clients._config.merge(Config(user_agent_appid=WATCHER_APP_ID))
    return Store.create(clients, stack.settings)


def _wait(stack: Any, pks: list[str]) -> dict[str, tuple[Any, float]]:
    """Each job once final, with the perf_counter moment the callback had finished it (or,
    for a job that went on after its first attempt, the moment a read saw it final)."""
    from gantry.compute.base import compute_name

    done = {}
    deadline = time.perf_counter() + JOB_TIMEOUT_SECONDS * max(1, len(pks))
    for pk in pks:
        seen = stack.finished.wait(compute_name(pk, 1), deadline)
        job = stack.watcher.jobs.get(pk)
        while not job.status.is_terminal:
            if time.perf_counter() > deadline:
                raise TimeoutError(f"job {pk} did not finish")
            time.sleep(POLL_SECONDS)
            job = stack.watcher.jobs.get(pk)
            seen = time.perf_counter()
        done[pk] = (job, seen)
    return done


def _timing(stack: Any, job: Any, posted: float, create_call: float, seen: float) -> Timing:
    from gantry import timeutil

    if job.status.label != "Succeeded":
        raise RuntimeError(f"job {job.pk} ended {job.status.label}: {job.error_message}")
    # The backend's record of the compute job: when the runner process started and exited.
    state = stack.ctx.compute.describe(job.compute_job_id)
    process = (state.stopped_at - state.started_at) / 1000
    exited = timeutil.parse_iso(job.completed_at).timestamp() - state.stopped_at / 1000
    return Timing(
        create_call=create_call,
        client_wall=seen - posted,
        to_start=_seconds(job.created, job.started_at),
        process=process,
        runner=job.invoke_duration or 0.0,
        algorithm=job.exec_duration or 0.0,
        callback=exited,
        total=_seconds(job.created, job.completed_at),
    )


def _post(api: Any, algorithm_url: str, value: int) -> tuple[str, float, float]:
    posted = time.perf_counter()
    job = api.request("POST", "algorithms/jobs/", job_body(algorithm_url, value))
    return str(job["pk"]), posted, time.perf_counter() - posted


def _sequential(stack: Any, api: Any, algorithm_url: str, count: int) -> list[Timing]:
    timings = []
    for value in range(count):
        pk, posted, create_call = _post(api, algorithm_url, value)
        job, seen = _wait(stack, [pk])[pk]
        timings.append(_timing(stack, job, posted, create_call, seen))
    return timings


def _burst(stack: Any, api: Any, algorithm_url: str, count: int) -> tuple[list[Timing], float]:
    started = time.perf_counter()
    posts = [_post(api, algorithm_url, value) for value in range(count)]
    done = _wait(stack, [pk for pk, _, _ in posts])
    wall = max(seen for _, seen in done.values()) - started
    return [
        _timing(stack, done[pk][0], posted, call, done[pk][1]) for pk, posted, call in posts
    ], wall


# --- a run ---------------------------------------------------------------------------------


@dataclass
class Run:
    """One algorithm's figures in one mode."""

    first: Timing | None = None  # the first job of a fresh stack
    sequential: list[Timing] = field(default_factory=list)
    sequential_cpu: Cpu = field(default_factory=Cpu)  # per job
    requests: collections.Counter[tuple[str, str, str]] = field(
        default_factory=collections.Counter
    )  # per job
    polling: float = 0.0  # the stack's queue pollers' requests per second, not per job
    connections: float = 0.0  # TCP connections the endpoint accepted, per job
    burst: list[Timing] = field(default_factory=list)
    burst_wall: float = 0.0
    burst_cpu: Cpu = field(default_factory=Cpu)  # per job
    burst_connections: float = 0.0  # per job


def _measure(
    stack: Any, counter: RequestCounter, api: Any, algorithm_url: str, sequential: int, burst: int
) -> Run:
    run = Run()
    run.first = _sequential(stack, api, algorithm_url, 1)[0]
    before, cpu, started = counter.snapshot(), _cpu(stack), time.perf_counter()
    opened = stack.endpoint.connections_opened
    run.sequential = _sequential(stack, api, algorithm_url, sequential)
    run.sequential_cpu = (_cpu(stack) - cpu) / sequential
    run.connections = (stack.endpoint.connections_opened - opened) / sequential
    elapsed = time.perf_counter() - started
    counts = counter.snapshot() - before
    receives = sum(n for (_, _, op), n in counts.items() if op in POLLING_OPERATIONS)
    run.polling = receives / elapsed
    run.requests = collections.Counter(
        {
            key: n / sequential
            for key, n in counts.items()
            if key[2] not in POLLING_OPERATIONS and key[0] != WATCHER_APP_ID
        }
    )
    if burst:
        cpu, opened = _cpu(stack), stack.endpoint.connections_opened
        run.burst, run.burst_wall = _burst(stack, api, algorithm_url, burst)
        run.burst_cpu = (_cpu(stack) - cpu) / burst
        run.burst_connections = (stack.endpoint.connections_opened - opened) / burst
    return run


def _stack(mode: str, image_store: Path | None) -> Any:
    from gantry.local.stack import LocalStack
    from gantry.settings import Settings

    name = f"bench-pipeline-{mode}"
    options: dict[str, Any] = {
        "fork_server": mode == "fork",
        "sandbox": "required",
        "extra_env": {"AWS_SDK_UA_APP_ID": RUNNER_APP_ID},
    }
    if image_store is not None:
        options["image_store"] = image_store
    # A burst is one user's jobs of one algorithm: no quota or credit limit may refuse them.
    limits = 10_000
    settings = Settings(
        table_name=name,
        bucket_name=name,
        max_active_jobs_per_user=limits,
        max_active_jobs_per_algorithm=limits,
        max_active_jobs=limits,
        monthly_credits=10**9,
        max_jobs_per_month=10**6,
    )
    return LocalStack.start(settings, **options)


def _oci_image(store_root: Path) -> str | None:
    """The busybox image prepared in a store; None when Debian's package is out of reach."""
    from gantry.oci import ImageStore

    try:
        from tests.runner_rootfs import busybox_archive

        archive = busybox_archive(store_root.parent / "image.tar", cmd=IMAGE_COMMAND)
    except Exception as error:  # no network to Debian's archive, no dpkg-deb
        print(f"  (the OCI image could not be built: {error})")
        return None
    return str(ImageStore(store_root).prepare(archive).ref)


def _run_mode(
    mode: str, sequential: int, burst: int, oci_jobs: int, oci_store: Path | None
) -> dict[str, Run]:
    oci_ref = _oci_image(oci_store) if oci_store is not None and oci_jobs else None
    stack = _stack(mode, oci_store if oci_ref else None)
    counter = _counter(stack.endpoint.app)
    stack.endpoint.app = counter
    stack.watcher = _watcher(stack)
    stack.finished = Finished(stack.ctx.compute_backend)
    runs: dict[str, Run] = {}
    try:
        api = stack_api(stack)
        register_sockets(api.request)
        command = register_algorithm(api.request, "Noop", NOOP_IMAGE)["api_url"]
        runs["command"] = _measure(stack, counter, api, command, sequential, burst)
        if oci_ref is not None:
            image_algorithm = {"image": oci_ref, "command": IMAGE_COMMAND}
            image = register_algorithm(api.request, "Noop image", image_algorithm)["api_url"]
            runs["image"] = _measure(stack, counter, api, image, oci_jobs, 0)
    finally:
        stack.stop()
    return runs


def stack_api(stack: Any) -> Any:
    from gantry.local.client import InProcessApi

    return InProcessApi(stack.ctx, stack.ctx.store.users.create_token("bench"))


# --- printing ------------------------------------------------------------------------------


def _ms(samples: Iterable[float]) -> str:
    values = list(samples)
    return f"{statistics.median(values) * 1000:6.0f} {percentile(values, 95) * 1000:6.0f}"


def _table(title: str, runs: dict[str, list[Timing]]) -> None:
    modes = list(runs)
    print(f"  {title:<44}" + "".join(f"{MODES[m]:>16}" for m in modes))
    print(f"  {'(ms: median p95)':<44}" + "".join(f"{'median    p95':>16}" for _ in modes))
    for label, value in STAGES:
        print(f"  {label:<44}" + "".join(f"{_ms(map(value, runs[m])):>16}" for m in modes))


def _requests_table(runs: dict[str, Run]) -> None:
    modes = list(runs)
    keys = sorted(set().union(*(run.requests for run in runs.values())))
    print(f"  {'AWS requests per job':<44}" + "".join(f"{MODES[m]:>16}" for m in modes))
    for who, name in ((PLATFORM, "platform"), (RUNNER_APP_ID, "runner")):
        mine = [k for k in keys if k[0] == who]
        totals = "".join(f"{sum(runs[m].requests[k] for k in mine):>16.1f}" for m in modes)
        print(f"  {name + ', in all':<44}{totals}")
        for key in mine:
            label = f"  {key[1]} {key[2]}"
            print(f"  {label:<44}" + "".join(f"{runs[m].requests[key]:>16.1f}" for m in modes))
    polling = "".join(f"{runs[m].polling:>16.1f}" for m in modes)
    print(f"  {'(and queue polling, per second, not per job)':<44}{polling}")
    opened = "".join(f"{runs[m].connections:>16.1f}" for m in modes)
    print(f"  {'TCP connections opened per job (all above)':<44}{opened}")


def _cpu_rows(cpu: dict[str, Cpu]) -> None:
    for label, value in (
        ("CPU per job, all processes", lambda c: c.total),
        ("  this one: API, callback, AWS endpoint", lambda c: c.platform),
        ("  the runners, sandboxes and algorithms", lambda c: c.runners),
    ):
        print(f"  {label:<44}" + "".join(f"{value(c) * 1000:>13.0f} ms" for c in cpu.values()))


def _gap(run: Run, mode: str) -> None:
    """Where created -> Succeeded goes, stage by stage, and what each stage costs in CPU."""
    jobs = run.sequential
    stages = [
        ("created -> runner started (provision, submit, fork)", [t.to_start for t in jobs]),
        ("runner start-up (config, S3 client, task)", [t.process - t.runner for t in jobs]),
        ("runner: staging, checks, uploads, result", [t.runner - t.algorithm for t in jobs]),
        ("the algorithm (bwrap, its own process)", [t.algorithm for t in jobs]),
        ("runner exit -> Succeeded (callback)", [t.callback for t in jobs]),
    ]
    total = statistics.median(t.total for t in jobs)
    print(
        f"\n  created -> Succeeded, one at a time, {mode}: {total * 1000:.0f} ms (median), "
        "by stage:"
    )
    for label, samples in stages:
        median = statistics.median(samples)
        print(f"    {label:<54}{median * 1000:6.0f} ms {median / total * 100:5.0f} %")
    requests = sum(n for (who, _, _), n in run.requests.items() if who == PLATFORM)
    runner_requests = sum(n for (who, _, _), n in run.requests.items() if who == RUNNER_APP_ID)
    cpu = run.sequential_cpu
    print(
        f"  CPU per job {cpu.total * 1000:.0f} ms: this process {cpu.platform * 1000:.0f} ms for "
        f"{requests:.0f} AWS requests (about {cpu.platform / max(requests, 1) * 1000:.1f} ms "
        "each, client and endpoint, the moto endpoint being in this process) and the API; "
        f"runners {cpu.runners * 1000:.0f} ms (with {runner_requests:.0f} requests, bwrap and "
        "the algorithm's interpreter)"
    )


def _report(title: str, runs: dict[str, Run], burst: int) -> None:
    modes = list(runs)
    print(f"\n{title}")
    first = {m: [runs[m].first] for m in modes if runs[m].first is not None}
    _table("first job of a fresh stack", first)  # type: ignore[arg-type]
    print()
    _table(
        f"{len(runs[modes[0]].sequential)} jobs, one at a time",
        {m: runs[m].sequential for m in modes},
    )
    _cpu_rows({m: runs[m].sequential_cpu for m in modes})
    print()
    _requests_table(runs)
    if burst and all(runs[m].burst for m in modes):
        print()
        _table(f"burst of {burst} jobs", {m: runs[m].burst for m in modes})
        _cpu_rows({m: runs[m].burst_cpu for m in modes})
        rates = "".join(f"{burst / runs[m].burst_wall:>10.2f} jobs/s" for m in modes)
        print(f"  {'throughput (first POST -> all Succeeded)':<44}{rates}")
        opened = "".join(f"{runs[m].burst_connections:>16.1f}" for m in modes)
        print(f"  {'TCP connections opened per job':<44}{opened}")
    last = runs[modes[-1]]
    _gap(last, MODES[modes[-1]])
    median = statistics.median(t.total for t in last.sequential)
    verdict = "met" if median <= GOAL_SECONDS else "NOT met"
    print(
        f"  goal: created -> Succeeded <= {GOAL_SECONDS:.1f} s one at a time: {verdict} "
        f"({median:.2f} s, {MODES[modes[-1]]})"
    )
    if burst and last.burst:
        rate = burst / last.burst_wall
        verdict = "met" if rate >= GOAL_JOBS_PER_SECOND else "NOT met"
        print(
            f"  goal: >= {GOAL_JOBS_PER_SECOND:.0f} jobs/s in a burst: {verdict} "
            f"({rate:.2f} jobs/s; CPU per job {last.burst_cpu.total:.2f} s on {os.cpu_count()} "
            f"CPUs allows at most {(os.cpu_count() or 1) / max(last.burst_cpu.total, 1e-9):.1f} "
            "jobs/s)"
        )


def main() -> None:
    local_credentials()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    sequential = int(os.environ.get("GANTRY_BENCH_PIPELINE_JOBS", "15"))
    burst = int(os.environ.get("GANTRY_BENCH_PIPELINE_BURST", "30"))
    oci_jobs = int(os.environ.get("GANTRY_BENCH_PIPELINE_OCI_JOBS", "10"))
    modes = os.environ.get("GANTRY_BENCH_PIPELINE_MODES", "process,fork").split(",")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise SystemExit(f"GANTRY_BENCH_PIPELINE_MODES: unknown {unknown}; known: {list(MODES)}")
    from gantry.settings import Settings

    print(
        "End to end on a fresh local stack (embedded AWS endpoint, local backend, "
        f"{Settings().local_workers} workers, sandbox required, {os.cpu_count()} CPUs), "
        f"load average {os.getloadavg()[0]:.1f}:"
    )
    scratch = Path(tempfile.mkdtemp(prefix="gantry-bench-pipeline-"))
    scratch.chmod(0o755)
    results: dict[str, dict[str, Run]] = {}
    try:
        for mode in modes:
            store = scratch / mode / "images"
            store.mkdir(parents=True)
            store.parent.chmod(0o755)
            results[mode] = _run_mode(mode, sequential, burst, oci_jobs, store)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    _report(
        "The no-op command from a folder (python, writes its one output):",
        {m: results[m]["command"] for m in modes},
        burst,
    )
    if all("image" in results[m] for m in modes):
        _report(
            "The same as an OCI image (busybox sh, from its root filesystem, as its USER):",
            {m: results[m]["image"] for m in modes},
            0,
        )
    print(f"\n  load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

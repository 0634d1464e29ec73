"""``python -m batch_runner fork-server``: a warm runner that forks one runner per job.

One machine only (the local backend). A runner started per job spends most of its time
starting: the interpreter, then boto3, pydantic and the runner's modules, then botocore's
service models for its S3 client. This server pays that once: it imports everything a job
needs, then waits for requests on stdin. For each it forks a child that becomes exactly
what ``python -m batch_runner ARGS`` would have been: a process of its own, leader of a new
session, with the request's environment, working directory and log file as stdout and
stderr, running ``batch_runner.cli.main(ARGS)`` and exiting with its exit code. The
algorithm is started by that child as before (bwrap, dropped user, resource limits): the
sandbox, the limits and a fresh process for the algorithm are per job, as ever.

Protocol, one JSON object per line. In, on stdin::

    {"id": 7, "argv": ["invoke", "--file", "s3://…"], "env": {...}, "cwd": "/dir" | null,
     "log": "/scratch/runner.log"}

Out, on stdout: ``{"id": 7, "pid": 4242}`` once the child exists (or ``{"id": 7, "error":
"…"}``), and ``{"exited": 4242, "code": N}`` when it ends (``N`` as ``Popen.returncode``:
negative for a signal). At the end of stdin the server stops taking requests, waits for its
children and exits.

The server must stay single-threaded (a fork copies only the calling thread, so a lock held
by another thread would stay locked forever in the child): it preloads modules and caches,
never threads or connections. The one client it builds, the next job's S3 client, has made no
request; a child takes it only if its environment is the server's but for its ``GANTRY_``
settings (``batch_runner.transfer``), so no job signs with another's credentials.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import json
import os
import selectors
import signal
import sys
import threading
import traceback
from typing import Any


def preload() -> None:
    """Import what a job imports and fill the caches that depend on nothing of the job."""
    import botocore.session

    import batch_runner.cli
    import batch_runner.serving  # noqa: F401  (invoke-mode images, through run_invocation)
    from batch_runner import transfer
    from gantry import kinds

    # botocore's service models and endpoint rules, parsed once (not a client: its
    # credentials and endpoint come from each job's environment).
    session = botocore.session.get_session()
    loader = session.get_component("data_loader")
    session.get_service_model("s3")
    with contextlib.suppress(Exception):
        loader.load_service_model("s3", "endpoint-rule-set-1")
    loader.load_data("endpoints")
    loader.load_data("partitions")
    loader.load_data("sdk-default-configuration")
    transfer.share_loader(loader)
    # The S3 client itself when the environment holds the credentials: every job forked
    # from here has this environment (but its GANTRY_ settings), and one that does not
    # builds its own client (transfer.s3_client checks).
    transfer.prepare_client()
    # The output checks' compiled JSON schemas of every kind.
    for spec in kinds.ALL_SPECS:
        if spec.schema is not None:
            kinds.validate_json(None, [spec.schema])
    # Jobs are forked from this state: keep the collector off the shared pages.
    gc.collect()
    gc.freeze()


def _send(document: dict[str, Any]) -> None:
    # Straight to the file descriptor: nothing may wait in a buffer a child would inherit.
    data = (json.dumps(document) + "\n").encode()
    while data:
        data = data[os.write(1, data) :]


def _child(request: dict[str, Any], handlers: dict[int, Any], inherited: list[int]) -> None:
    """In the forked child: become the job's runner process, run it, exit. Never returns."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        for fd in inherited:
            os.close(fd)
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        os.setsid()
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(null)
        os.close(log)
        os.environ.clear()
        os.environ.update(request["env"])
        if request.get("cwd"):
            os.chdir(request["cwd"])
        gc.unfreeze()
        from batch_runner.cli import main

        try:
            code = main(list(request["argv"]))
        except SystemExit as done:  # argparse, as ``python -m`` would report it
            code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
            if done.code is not None and not isinstance(done.code, int):
                print(done.code, file=sys.stderr)
        # What the interpreter does at exit: join worker threads, run exit handlers.
        with contextlib.suppress(BaseException):
            threading._shutdown()  # type: ignore[attr-defined]
        with contextlib.suppress(BaseException):
            atexit._run_exitfuncs()
    except BaseException:
        with contextlib.suppress(BaseException):
            traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(BaseException):
                stream.flush()
        os._exit(code & 0xFF)


def _spawn(request: dict[str, Any], handlers: dict[int, Any], inherited: list[int]) -> int | None:
    """Fork the child for ``request``; its pid, or None (the error was answered)."""
    try:
        for key in ("argv", "env", "log"):
            if key not in request:
                raise ValueError(f"the request has no {key!r}")
        pid = os.fork()
    except Exception as error:
        _send({"id": request.get("id"), "error": f"{type(error).__name__}: {error}"})
        return None
    if pid == 0:
        _child(request, handlers, inherited)
    _send({"id": request.get("id"), "pid": pid})
    return pid


def _reap(children: set[int]) -> None:
    """Answer for every child that has ended."""
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            children.clear()
            return
        if pid == 0:
            return
        children.discard(pid)
        _send({"exited": pid, "code": os.waitstatus_to_exitcode(status)})


def serve() -> int:
    """Preload, then fork a runner per request until stdin ends; 0 once all have ended."""
    # What a fresh interpreter has, for the children.
    handlers: dict[int, Any] = {
        s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD)
    }
    preload()
    # SIGCHLD wakes the loop through this pipe (the loop stays single-threaded).
    read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(write_end)
    selector = selectors.DefaultSelector()
    selector.register(0, selectors.EVENT_READ, "requests")
    selector.register(read_end, selectors.EVENT_READ, "children")
    inherited = [read_end, write_end, selector.fileno()]
    children: set[int] = set()
    pending = b""
    reading = True
    _send({"ready": os.getpid()})
    while reading or children:
        for key, _ in selector.select(timeout=None if reading else 1.0):
            if key.data == "children":
                with contextlib.suppress(BlockingIOError):
                    while os.read(read_end, 512):
                        pass
                continue
            chunk = os.read(0, 65536)
            if not chunk:
                reading = False
                selector.unregister(0)
                continue
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                if not line.strip():
                    continue
                try:
                    request = json.loads(line)
                except ValueError as error:
                    _send({"id": None, "error": f"not JSON: {error}"})
                    continue
                pid = _spawn(request, handlers, inherited)
                if pid is not None:
                    children.add(pid)
        _reap(children)
    return 0

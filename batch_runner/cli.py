"""``python -m batch_runner invoke (--file s3://bucket/key | --task JSON) [-- CMD ARGS]``.

Exit codes: 0 the signed result was written (whatever the algorithm did; the platform
decides success), 1 no result could be written, 2 bad usage or task.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from batch_runner import __version__, credentials
from batch_runner.config import ConfigError, RunnerConfig
from batch_runner.invoke import run_invocation
from batch_runner.logs import JsonLog
from batch_runner.transfer import parse_s3_uri, s3_client
from gantry.contract import Invocation

EXIT_OK = 0
EXIT_NO_RESULT = 1
EXIT_USAGE = 2
# The task file is small JSON; anything bigger is not a task.
MAX_TASK_BYTES = 10 * 1024 * 1024


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m batch_runner")
    parser.add_argument("--version", action="version", version=f"gantry-runner {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    invoke = commands.add_parser("invoke", help="run one invocation")
    source = invoke.add_mutually_exclusive_group(required=True)
    source.add_argument("--file", help="s3://bucket/key of the invocation JSON")
    source.add_argument("--task", help="the invocation JSON itself")
    invoke.add_argument("--input-root", help="default $GANTRY_INPUT_ROOT or /input")
    invoke.add_argument("--output-root", help="default $GANTRY_OUTPUT_ROOT or /output")
    invoke.add_argument("--sandbox", choices=("off", "auto", "required"))
    invoke.add_argument("--workdir", help="the algorithm's working directory (bound read-only)")
    invoke.add_argument(
        "--ro-path", action="append", default=[], help="extra path visible read-only"
    )
    serve = commands.add_parser(
        "serve", help="invoke mode: run tasks from stdin (JSON lines) against one server start"
    )
    serve.add_argument("--input-root", help="default $GANTRY_INPUT_ROOT or /input")
    serve.add_argument("--output-root", help="default $GANTRY_OUTPUT_ROOT or /output")
    serve.add_argument("--sandbox", choices=("off", "auto", "required"))
    commands.add_parser(
        "fork-server",
        help="one machine: preload once, then fork one runner per request from stdin",
    )
    return parser


def serve(args: argparse.Namespace) -> int:
    """Tasks from stdin, one JSON object per line: ``{"file": "s3://…", "signing_key_hex"}``.

    Each gets its signed result as with ``invoke``, and a line ``{"served": pk,
    "return_code": N}`` (or ``{"served": null, "error": …}`` for an unreadable task) on
    stdout; the server stops at the end of the input. One machine only (the local backend).
    """
    from batch_runner.serving import InvokeSession

    log = JsonLog()
    try:
        config = RunnerConfig.from_env(
            input_root=args.input_root, output_root=args.output_root, sandbox=args.sandbox
        )
    except ConfigError as error:
        print(f"python -m batch_runner: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    client = s3_client()
    session = InvokeSession(config, client=client, log=log)
    try:
        for line in sys.stdin:
            if not line.strip():
                continue
            reply: dict[str, object]
            try:
                task = json.loads(line)
                key = str(task["signing_key_hex"])
                bytes.fromhex(key)
                invocation = _load_task(argparse.Namespace(task=None, file=task["file"]), client)
            except Exception as error:
                reply = {"served": None, "error": f"cannot read the task: {error}"}
            else:
                try:
                    result = session.run(invocation, key)
                    reply = {"served": invocation.pk, "return_code": result.return_code}
                except Exception as error:
                    log.error(f"The result could not be written: {type(error).__name__}: {error}")
                    reply = {"served": invocation.pk, "error": "no result written"}
            log.raw(reply)
    finally:
        session.close()
    return EXIT_OK


def _load_task(args: argparse.Namespace, client: Any) -> Invocation:
    if args.task is not None:
        raw = args.task.encode()
    else:
        bucket, key = parse_s3_uri(args.file)
        # One GET (the transfer manager would HEAD it first and start its threads): the task
        # is small, and reading stops one byte past the limit.
        with contextlib.closing(client.get_object(Bucket=bucket, Key=key)["Body"]) as body:
            raw = body.read(MAX_TASK_BYTES + 1)
    if len(raw) > MAX_TASK_BYTES:
        raise ValueError("the task is too large")
    return Invocation.model_validate(json.loads(raw))


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    # Everything after "--" is the algorithm's command, never parsed as runner options.
    command: list[str] = []
    if "--" in args_in:
        split = args_in.index("--")
        args_in, command = args_in[:split], args_in[split + 1 :]
    parser = _parser()
    args = parser.parse_args(args_in)
    if args.command == "serve":
        return serve(args)
    if args.command == "fork-server":
        from batch_runner import forkserver

        return forkserver.serve()
    log = JsonLog()
    try:
        config = RunnerConfig.from_env(
            input_root=args.input_root,
            output_root=args.output_root,
            command=command or None,
            sandbox=args.sandbox,
            workdir=args.workdir,
            ro_paths=args.ro_path,
        )
        access = credentials.claim()
        if access is not None:
            config = dataclasses.replace(config, signing_key_hex=access.signing_key)
        client = s3_client(session=access.session if access else None)
        if not config.signing_key_hex:
            raise ConfigError("GANTRY_SIGNING_KEY_HEX is not set: the result cannot be signed")
        invocation = _load_task(args, client)
    except credentials.CredentialsError as error:
        print(f"{parser.prog}: error: no credentials for the job: {error}", file=sys.stderr)
        return EXIT_NO_RESULT
    except (ConfigError, ValidationError, ValueError) as error:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as error:  # e.g. the task file cannot be downloaded
        print(f"{parser.prog}: error: cannot read the task: {error}", file=sys.stderr)
        return EXIT_USAGE
    try:
        run_invocation(invocation, config, client=client, log=log)
    except Exception as error:
        log.error(f"The result could not be written: {type(error).__name__}: {error}")
        return EXIT_NO_RESULT
    return EXIT_OK

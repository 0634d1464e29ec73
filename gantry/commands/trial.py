"""``gantry try IMAGE.tar --input ct-image=case.mha``: run an image archive once, exactly as
a job would, without a running platform.

An embedded local stack lives for this one run: the inputs become sockets of an algorithm
(kind from the value: an image file, a .csv file, or a JSON value), ``--model`` its active
model (extracted to ``/opt/ml/model``), the archive is unpacked
into the image store (``.gantry/images`` by default, reused by later runs), and one job goes
through the same path as on ``gantry local up``: provisioning (``/input/inputs.json`` in
grand-challenge's shape), the runner and its sandbox with the image's root as ``/``, and the
platform's output validation. The outputs land in ``--output-dir``; the algorithm's logs are
printed; the exit status is 1 when the job would fail, with the same message.
"""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from gantry.commands.client import CliError, reported, say
from gantry.local.connection import DEFAULT_STATE_DIR, image_store_dir

IMAGE_SUFFIXES = (".mha", ".mhd", ".nii", ".nii.gz", ".nrrd", ".tif", ".tiff", ".png", ".jpg")


def _is_image(path: Path) -> bool:
    return path.name.lower().endswith(IMAGE_SUFFIXES)


def input_socket(slug: str, value: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the socket to create, the job input without its upload) for ``slug=value``."""
    path = Path(value)
    if path.is_file() and _is_image(path):
        return {"kind": "Image", "relative_path": f"images/{slug}"}, {"upload": path}
    if path.is_file() and path.suffix.lower() == ".csv":
        return {"kind": "CSV file", "relative_path": f"{slug}.csv"}, {"upload": path}
    if path.is_file() and path.suffix.lower() == ".json":
        try:
            parsed = json.loads(path.read_text())
        except ValueError as error:
            raise CliError(f"--input {slug}: {path} is not valid JSON: {error}") from None
        return {"kind": "Anything", "relative_path": f"{slug}.json"}, {"value": parsed}
    if path.is_file():
        raise CliError(f"--input {slug}: give an image, a .csv or .json file, or a JSON value")
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = value  # a bare word is a string
    return {"kind": "Anything", "relative_path": f"{slug}.json"}, {"value": parsed}


def output_socket(relative_path: str) -> tuple[str, dict[str, Any]]:
    """The slug and socket for an output path under /output (``images/x``, ``x.json``, ...)."""
    path = relative_path.strip("/")
    if path.startswith("images/") and path.count("/") == 1:
        return path.split("/")[1], {"kind": "Image", "relative_path": path}
    if path.endswith(".json") and "/" not in path:
        return path.removesuffix(".json"), {"kind": "Anything", "relative_path": path}
    if path.endswith(".csv") and "/" not in path:
        return path.removesuffix(".csv"), {"kind": "CSV file", "relative_path": path}
    raise CliError(
        f"--output {relative_path}: give images/<slug>, <slug>.json or <slug>.csv (under /output)"
    )


def _pairs(values: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for item in values:
        slug, sep, value = item.partition("=")
        if not sep or not slug:
            raise CliError(f"--input {item}: write it as SLUG=VALUE")
        pairs.append((slug.strip(), value))
    return pairs


def try_image(
    archive: Annotated[Path, typer.Argument(help="A docker-save or OCI image archive.")],
    inputs: Annotated[
        list[str],
        typer.Option(
            "--input",
            help="SLUG=VALUE: an image file, a .csv or .json file, or a JSON value (repeat).",
        ),
    ],
    outputs: Annotated[
        list[str] | None,
        typer.Option(
            "--output",
            help="An output it must write, under /output: images/<slug>, <slug>.json or "
            "<slug>.csv (repeat; default results.json).",
            show_default=False,
        ),
    ] = None,
    output_dir: Annotated[Path, typer.Option(help="Where the outputs are written.")] = Path(
        "gantry-try-output"
    ),
    time_limit: Annotated[int, typer.Option(help="Seconds the job may run (300-86400).")] = 300,
    model: Annotated[
        Path | None,
        typer.Option(
            help="A model tarball (.tar, .tar.gz) or folder, extracted to /opt/ml/model.",
            show_default=False,
        ),
    ] = None,
    state_dir: Annotated[
        Path, typer.Option(help="Whose image store to use (<state dir>/images).")
    ] = DEFAULT_STATE_DIR,
) -> None:
    """Run an image archive once, exactly as a job would, and show its outputs and logs."""
    with reported():
        if model is not None and not model.exists():
            raise CliError(f"--model {model} does not exist")
        wanted = outputs or ["results.json"]
        _run(archive, _pairs(inputs), wanted, output_dir, time_limit, state_dir, model)


def _run(
    archive: Path,
    inputs: list[tuple[str, str]],
    outputs: list[str],
    output_dir: Path,
    time_limit: int,
    state_dir: Path,
    model: Path | None = None,
) -> dict[str, Any]:
    from gantry.commands.catalog import unpack_archive
    from gantry.local import demo as steps
    from gantry.local.client import ApiError, InProcessApi
    from gantry.local.stack import LocalStack
    from gantry.settings import Settings

    sockets = {slug: input_socket(slug, value) for slug, value in inputs}
    out_sockets = dict(output_socket(path) for path in outputs)
    if clash := set(sockets) & set(out_sockets):
        raise CliError(f"{', '.join(sorted(clash))}: both an input and an output")
    store = image_store_dir(state_dir)
    prepared = unpack_archive(store, archive)
    config = prepared.config
    say(f"Image {config.short_id}: {len(config.layers)} layers, root in {prepared.rootfs}")
    # The job's own messages and logs are printed below; the backend's copy would repeat them.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    logging.getLogger("gantry.compute.local").setLevel(logging.ERROR)
    # Names of its own: stacks started in one process share the embedded endpoint's state.
    name = f"gantry-try-{uuid.uuid4().hex[:10]}"
    settings = Settings(table_name=name, bucket_name=name)
    stack = LocalStack.start(settings, image_store=store, sweep_every=None)
    try:
        api = InProcessApi(stack.ctx, stack.ctx.store.users.create_token("try"))
        for slug, socket in [*((s, v[0]) for s, v in sockets.items()), *out_sockets.items()]:
            api.request("POST", "components/interfaces/", {"title": slug, **socket})
        algorithm = api.request(
            "POST",
            "algorithms/",
            {
                "title": f"try {config.short_id}",
                "interfaces": [{"inputs": list(sockets), "outputs": list(out_sockets)}],
                "time_limit": time_limit,
            },
        )
        api.request(
            "POST",
            "algorithms/images/",
            {
                "algorithm": algorithm["api_url"],
                "image": prepared.ref,
                "entrypoint": config.entrypoint,
                "command": config.cmd,
                "sha256": config.digest,
            },
        )
        if model is not None:
            from gantry.commands.models import model_tarball

            with model_tarball(model) as tarball:
                upload = steps.upload_file(api, tarball)
            imported = api.request(
                "POST",
                "algorithms/models/",
                {"algorithm": algorithm["api_url"], "user_upload": upload["api_url"]},
            )
            imported = steps.wait_for_import(api, f"algorithms/models/{imported['pk']}/")
            if imported["import_status"] != "Completed":
                raise CliError(f"--model {model}: {imported['status']}")
            say(f"Model {model} attached (/opt/ml/model)")
        job_inputs = []
        for slug, (socket, given) in sockets.items():
            entry: dict[str, Any] = {"interface": slug}
            if "value" in given:
                entry["value"] = given["value"]
            else:
                upload = steps.upload_file(api, given["upload"])
                key = "user_uploads" if socket["kind"] == "Image" else "user_upload"
                entry[key] = [upload["api_url"]] if key == "user_uploads" else upload["api_url"]
            job_inputs.append(entry)
        job = api.request(
            "POST", "algorithms/jobs/", {"algorithm": algorithm["api_url"], "inputs": job_inputs}
        )
        finished = steps.wait_for(
            api, job["pk"], lambda label: say(f"Job: {label}"), time_limit + 120
        )
        for name in ("stdout", "stderr"):
            if finished.get(name):
                say(f"[bold]Algorithm {name}:[/]\n{escape(finished[name].rstrip())}")
        if finished["status"] != "Succeeded":
            raise CliError(f"Job {finished['status']}: {finished['error_message']}")
        output_dir.mkdir(parents=True, exist_ok=True)
        say(f"[green]Job Succeeded[/]; outputs in {output_dir}:")
        for path in steps.fetch_outputs(api, finished, output_dir):
            say(f"  {path}")
        return finished
    except ApiError as error:
        raise CliError(str(error)) from None
    finally:
        stack.stop()

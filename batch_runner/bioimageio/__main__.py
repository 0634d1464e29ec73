"""``python -m batch_runner.bioimageio``: validate a model package, or run it on a job.

validate PACKAGE [--test]          print the package's interfaces as JSON (exit 1: invalid)
run --model DIR --input-dir IN --output-dir OUT [--device auto|cpu|cuda]
    [--max-tile N] [--batch-size N]
"""

from __future__ import annotations

import argparse
import json
import sys

from batch_runner.bioimageio.plan import PackageError, PredictionError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m batch_runner.bioimageio")
    commands = parser.add_subparsers(dest="command", required=True)
    validate = commands.add_parser("validate", help="validate a package zip or folder")
    validate.add_argument("package")
    validate.add_argument(
        "--test", action="store_true", help="also reproduce the package's test outputs"
    )
    run = commands.add_parser("run", help="run the model on a job's input folder")
    for command in (validate, run):
        command.add_argument(
            "--allow-custom-ops",
            action="store_true",
            help="run the package's own Python operations (id: custom)",
        )
    run.add_argument("--model", required=True, help="the unpacked package (e.g. /opt/ml/model)")
    run.add_argument("--input-dir", required=True)
    run.add_argument("--output-dir", required=True)
    run.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    run.add_argument("--max-tile", type=int, default=None, help="largest tile side in pixels")
    run.add_argument("--batch-size", type=int, default=None, help="tiles per forward call")
    args = parser.parse_args(argv)

    from batch_runner.bioimageio import package, runtime

    try:
        if args.command == "validate":
            allow = args.allow_custom_ops
            summary = package.validate_package(args.package, allow_custom_ops=allow)
            if args.test:
                with package.unpacked(args.package) as folder:
                    summary["test_max_difference"] = runtime.check_test_tensors(
                        package.load_plan(folder, allow_custom_ops=allow)
                    )
            print(json.dumps(summary, indent=2))
        else:
            written = runtime.run_job(
                args.model,
                args.input_dir,
                args.output_dir,
                device=args.device,
                allow_custom_ops=args.allow_custom_ops,
                max_tile=args.max_tile,
                batch_size=args.batch_size,
            )
            for path in written:
                print(path)
    except (PackageError, PredictionError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

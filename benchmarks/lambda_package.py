"""The API function's deployed code, built on this machine as ``cdk synth`` bundles it.

The asset comes from the bundler CDK runs (``infra.packaging.PipLocalBundling``: the project's
requirements minus what Lambda provides, gantry/ and lambdas/ copied, bytecode compiled when
the synth runs the runtime's Python), built for this machine's platform and Python so it can
be imported here; Powertools is installed as its
public layer holds it and boto3 as the runtime has it. Each import runs in a fresh interpreter
without site-packages, the three folders on ``sys.path`` in Lambda's order (function code,
layer, runtime), and writes no bytecode: /var/task is read-only, so a cold start compiles every
module it imports that has none.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "build" / "bench-lambda"


@dataclass(frozen=True)
class Package:
    task: Path  # /var/task: the code asset
    layer: Path  # /opt/python: the Powertools layer
    runtime: Path  # /var/runtime: boto3 of the Python runtime

    @property
    def path(self) -> list[str]:
        return [str(self.task), str(self.layer), str(self.runtime)]


def _pip_install(target: Path, *requirements: str, compile_bytecode: bool) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            *(() if compile_bytecode else ("--no-compile",)),
            "--target",
            str(target),
            *requirements,
        ],
        check=True,
    )


def build() -> Package:
    """Bundle the asset afresh (the sources change); pip's cache keeps it quick."""
    import shutil

    from infra.packaging import PipLocalBundling, pinned_version, project_requirements

    shutil.rmtree(BUILD, ignore_errors=True)
    package = Package(BUILD / "task", BUILD / "opt" / "python", BUILD / "runtime")
    machine = platform.machine()
    bundler = PipLocalBundling(
        project_requirements(),
        platforms=(f"manylinux2014_{machine}", f"manylinux_2_28_{machine}"),
        python_version=f"{sys.version_info.major}.{sys.version_info.minor}",
    )
    bundler.try_bundle(str(package.task))
    powertools = pinned_version("aws-lambda-powertools")
    _pip_install(package.layer, f"aws-lambda-powertools=={powertools}", compile_bytecode=False)
    # The runtime's own packages are installed with their bytecode.
    boto3 = __import__("boto3").__version__
    _pip_install(package.runtime, f"boto3=={boto3}", compile_bytecode=True)
    return package


def without_bytecode(package: Package) -> Package:
    """The same package with the asset's bytecode removed: what a synth with a Python other
    than the runtime's ships."""
    import shutil

    task = BUILD / "task-sources-only"
    shutil.rmtree(task, ignore_errors=True)
    shutil.copytree(package.task, task, ignore=shutil.ignore_patterns("__pycache__"))
    return Package(task, package.layer, package.runtime)


def import_command(package: Package, module: str) -> list[str]:
    """A fresh interpreter importing ``module`` from the package only (-S: no site-packages,
    -E: no PYTHON* variables), writing no bytecode (-B), as Lambda's read-only /var/task."""
    return python_command(package, f"import {module}")


def python_command(package: Package, code: str) -> list[str]:
    """A fresh interpreter running ``code`` with the package only on its path, as
    ``import_command``."""
    code = f"import sys; sys.path[:0] = {package.path!r}\n{code}"
    return [sys.executable, "-S", "-E", "-B", "-c", code]

"""Lambda code assets built without Docker, and the Powertools layer.

Bundling runs ``pip install --platform manylinux… --only-binary=:all:`` on the machine that runs
``cdk synth``: pip downloads wheels built for Lambda's Linux whatever the host is, so no Docker
engine is needed. The asset hash is the hash of the *output*, which also lets the tests skip
bundling (``aws:cdk:bundling-stacks: []``) without fingerprinting the whole repository.

Architecture: arm64 (Graviton). Lambda bills arm64 about 20 % less per GB-second for the same
work and every compiled dependency (pydantic-core, rpds-py, numpy, SimpleITK) publishes
manylinux aarch64 wheels. The GPU hosts are x86_64, but they run containers, not these assets.

Two assets: ``core`` (API, drop folder, sweeper) and ``imaging`` (adds SimpleITK, tifffile,
numpy for the two functions that read image headers). Keeping the heavy libraries out of the
API asset keeps its cold start short (DESIGN.md: heavy imports stay out of the API's path).
boto3 comes from the runtime and Powertools from its public layer, so neither is bundled.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import jsii
from aws_cdk import (
    AssetHashType,
    Aws,
    BundlingOptions,
    DockerImage,
    ILocalBundling,
)
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

REPO_ROOT = Path(__file__).resolve().parent.parent
# The packages copied into every asset: the domain and the thin handlers.
SOURCE_PACKAGES = ("gantry", "lambdas")
# Provided by the Lambda runtime (boto3) or by the Powertools layer: never bundled.
PROVIDED = ("boto3", "botocore", "aws-lambda-powertools")

RUNTIME = lambda_.Runtime.PYTHON_3_13
ARCHITECTURE = lambda_.Architecture.ARM_64
PYTHON_VERSION = "3.13"
# Lambda's python3.13 runs on Amazon Linux 2023 (glibc 2.34), so both tags load there.
PIP_PLATFORMS = ("manylinux2014_aarch64", "manylinux_2_28_aarch64")
POWERTOOLS_ACCOUNT = "017000801446"


def _requirement_name(requirement: str) -> str:
    name = requirement
    for stop in "[<>=!~; ":
        name = name.split(stop, 1)[0]
    return name.strip().lower()


def project_requirements(*extras: str) -> tuple[str, ...]:
    """Dependencies from pyproject.toml (one source of truth), minus the provided ones."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements.extend(project["optional-dependencies"][extra])
    return tuple(r for r in requirements if _requirement_name(r) not in PROVIDED)


@jsii.implements(ILocalBundling)
class PipLocalBundling:
    """Bundles on the host with pip's cross-platform wheel resolution."""

    def __init__(self, requirements: tuple[str, ...]) -> None:
        self.requirements = requirements

    def try_bundle(self, output_dir: str, **_options: object) -> bool:
        out = Path(output_dir)
        command = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-compile",
            "--target",
            str(out),
            "--implementation",
            "cp",
            "--python-version",
            PYTHON_VERSION,
            "--only-binary=:all:",
            *(arg for platform in PIP_PLATFORMS for arg in ("--platform", platform)),
            *self.requirements,
        ]
        subprocess.run(command, check=True)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "tests")
        for package in SOURCE_PACKAGES:
            shutil.copytree(REPO_ROOT / package, out / package, ignore=ignore, dirs_exist_ok=True)
        # Bytecode and test suites only add size; Lambda compiles on import.
        for junk in out.rglob("__pycache__"):
            shutil.rmtree(junk, ignore_errors=True)
        return True


def code_asset(*extras: str) -> lambda_.Code:
    """A zip asset holding gantry/, lambdas/ and the dependencies of the given extras."""
    requirements = project_requirements(*extras)
    return lambda_.Code.from_asset(
        str(REPO_ROOT),
        asset_hash_type=AssetHashType.OUTPUT,
        bundling=BundlingOptions(
            # Only used if local bundling declines, which it never does: it raises instead.
            image=DockerImage.from_registry("public.ecr.aws/sam/build-python3.13"),
            local=PipLocalBundling(requirements),
        ),
    )


class LambdaCode(Construct):
    """The two code assets and the Powertools layer, created once and shared by all functions."""

    def __init__(self, scope: Construct, construct_id: str, *, powertools_version: int) -> None:
        super().__init__(scope, construct_id)
        self.core = code_asset()
        self.imaging = code_asset("imaging")
        arch = "arm64" if ARCHITECTURE == lambda_.Architecture.ARM_64 else "x86_64"
        python = "python" + PYTHON_VERSION.replace(".", "")
        # The public layer is published in every commercial region under the same account.
        self.powertools = lambda_.LayerVersion.from_layer_version_arn(
            self,
            "Powertools",
            f"arn:{Aws.PARTITION}:lambda:{Aws.REGION}:{POWERTOOLS_ACCOUNT}:layer:"
            f"AWSLambdaPowertoolsPythonV3-{python}-{arch}:{powertools_version}",
        )

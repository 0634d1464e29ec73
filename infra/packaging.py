"""Lambda code assets built without Docker, and the Powertools layer.

Bundling runs ``pip install --platform manylinux… --only-binary=:all:`` on the machine that runs
``cdk synth``: pip downloads wheels built for Lambda's Linux whatever the host is, so no Docker
engine is needed. The asset hash is the hash of the *output*, which also lets the tests skip
bundling (``aws:cdk:bundling-stacks: []``) without fingerprinting the whole repository.

Architecture: arm64 (Graviton). Lambda bills arm64 about 20 % less per GB-second for the same
work and every compiled dependency (pydantic-core, rpds-py, numpy, SimpleITK) publishes
manylinux aarch64 wheels. The GPU hosts are x86_64, but they run containers, not these assets.

Assets: ``core`` (API, drop folder, sweeper), ``imaging`` (adds tifffile and numpy for the two
functions that read and convert images) and ``bioimageio`` (the import function: adds
bioimageio.spec, PyYAML and the package validator, batch_runner/bioimageio, to register
bioimage.io model packages; about 160 MB unpacked with numpy and Pillow). Keeping the heavy
libraries out of the API asset keeps its cold start short (DESIGN.md: heavy imports stay out of
the API's path). SimpleITK does not fit in any zip function (its one extension module is ~260
MB unzipped; Lambda allows 250 MB with layers), so it is a separate S3 asset (the CLI zips the
``pip install --target`` tree: ``SimpleITK/`` and its dist-info at the root) that
``gantry.sitk_loader`` downloads and unpacks into /tmp on first use: 48 MB from S3, 248 MB
unpacked, about 1.3 s to extract on two cores, once per execution environment. A container-
image function would avoid that, but needs Docker at deploy time. boto3 comes from the runtime
and Powertools from its public layer, so neither is bundled.
"""

from __future__ import annotations

import compileall
import py_compile
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
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_s3_assets as s3_assets
from constructs import Construct

from gantry.sitk_loader import ARCHIVE_ENV

REPO_ROOT = Path(__file__).resolve().parent.parent
# The packages copied into every asset: the domain and the thin handlers.
SOURCE_PACKAGES = ("gantry", "lambdas")
# The import function's asset adds the bioimage.io package validator (batch_runner/bioimageio
# with the runner package's one-line __init__; nothing else of the runner).
BIOIMAGEIO_SOURCES = (*SOURCE_PACKAGES, "batch_runner/__init__.py", "batch_runner/bioimageio")
# Of the bioimageio extra, what validating a package needs: not the runtime's onnxruntime,
# nor the project itself (its imaging extra: SimpleITK fits no zip function).
BIOIMAGEIO_VALIDATION_EXCLUDED = ("gantry", "onnxruntime")
# Provided by the Lambda runtime (boto3) or by the Powertools layer: never bundled.
PROVIDED = ("boto3", "botocore", "aws-lambda-powertools")

RUNTIME = lambda_.Runtime.PYTHON_3_13
ARCHITECTURE = lambda_.Architecture.ARM_64
PYTHON_VERSION = "3.13"
# Lambda's python3.13 runs on Amazon Linux 2023 (glibc 2.34), so both tags load there.
PIP_PLATFORMS = ("manylinux2014_aarch64", "manylinux_2_28_aarch64")
POWERTOOLS_ACCOUNT = "017000801446"
# Powertools release -> version of its public Python 3.13 layer. The release is the one
# pyproject.toml pins, so the tests run the code the functions get.
POWERTOOLS_LAYERS = {"3.23.0": 27}
# Too large for a zip function (see LambdaCode); shipped as an archive gantry.sitk_loader unpacks.
OUTSIDE_THE_ZIP = ("simpleitk",)
# s3://bucket/key of that archive, set on the imaging functions only.
SIMPLEITK_ARCHIVE_ENV = ARCHIVE_ENV


def _requirement_name(requirement: str) -> str:
    name = requirement
    for stop in "[<>=!~; ":
        name = name.split(stop, 1)[0]
    return name.strip().lower()


def pinned_version(package: str) -> str:
    """The ``==`` version pyproject.toml pins for ``package``."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"]:
        if _requirement_name(requirement) == package and "==" in requirement:
            return requirement.split("==", 1)[1].split(";", 1)[0].strip()
    raise ValueError(f"pyproject.toml must pin {package} with ==")


def powertools_layer_version() -> int:
    version = pinned_version("aws-lambda-powertools")
    try:
        return POWERTOOLS_LAYERS[version]
    except KeyError:
        raise ValueError(
            f"no Powertools layer version is known for {version}; add it to POWERTOOLS_LAYERS"
        ) from None


def layer_architecture(architecture: lambda_.Architecture) -> str:
    """The layer name's architecture part. Compare names: jsii hands out a new proxy object on
    every access, so ``==`` between two ``Architecture`` values is always False."""
    return "arm64" if architecture.name == lambda_.Architecture.ARM_64.name else "x86_64"


def bioimageio_validation_requirements() -> tuple[str, ...]:
    """The core requirements plus what validating a bioimage.io package needs."""
    extra = project_requirements("bioimageio")[len(project_requirements()) :]
    wanted = [r for r in extra if _requirement_name(r) not in BIOIMAGEIO_VALIDATION_EXCLUDED]
    return (*project_requirements(), *wanted)


def project_requirements(*extras: str) -> tuple[str, ...]:
    """Dependencies from pyproject.toml (one source of truth), minus the provided ones."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements.extend(project["optional-dependencies"][extra])
    return tuple(r for r in requirements if _requirement_name(r) not in PROVIDED)


@jsii.implements(ILocalBundling)
class PipLocalBundling:
    """Bundles on the host with pip's cross-platform wheel resolution. ``platforms`` and
    ``python_version``: Lambda's unless given (the API benchmark builds for the host, to
    import what the function gets). Bytecode is compiled when the host runs that Python
    version (it cannot be made for another)."""

    def __init__(
        self,
        requirements: tuple[str, ...],
        *,
        copy_sources: bool = True,
        platforms: tuple[str, ...] = PIP_PLATFORMS,
        python_version: str = PYTHON_VERSION,
        sources: tuple[str, ...] = SOURCE_PACKAGES,
    ) -> None:
        self.requirements = requirements
        self.copy_sources = copy_sources
        self.sources = sources
        self.platforms = platforms
        self.python_version = python_version

    def try_bundle(self, output_dir: str, *_options: object, **_kw_options: object) -> bool:
        # jsii passes the BundlingOptions struct positionally; nothing in it is needed here.
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
            self.python_version,
            "--only-binary=:all:",
            *(arg for platform in self.platforms for arg in ("--platform", platform)),
            *self.requirements,
        ]
        subprocess.run(command, check=True)
        if self.copy_sources:
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "tests")
            for package in self.sources:
                if (REPO_ROOT / package).is_file():
                    (out / package).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(REPO_ROOT / package, out / package)
                    continue
                shutil.copytree(
                    REPO_ROOT / package, out / package, ignore=ignore, dirs_exist_ok=True
                )
        for stale in out.rglob("__pycache__"):
            shutil.rmtree(stale, ignore_errors=True)
        if self.python_version == f"{sys.version_info.major}.{sys.version_info.minor}":
            # Lambda cannot write bytecode (/var/task is read-only), so without it every cold
            # start compiles each module it imports: pydantic, Powertools' parser, gantry
            # (about a third of the API's init). Unchecked: the sources never change.
            compileall.compile_dir(
                out,
                quiet=1,
                workers=0,
                invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
            )
        return True


def bundling_options(
    requirements: tuple[str, ...],
    *,
    copy_sources: bool,
    sources: tuple[str, ...] = SOURCE_PACKAGES,
) -> BundlingOptions:
    copy = " && cp -r --parents " + " ".join(sources) + " /asset-output/" if copy_sources else ""
    return BundlingOptions(
        # The Docker path is the fallback only if local bundling declined (it never does; it
        # raises). Its command also makes the assets' bundling cache keys differ: CDK caches
        # bundles by these options, and the local bundler object is not part of that key.
        image=DockerImage.from_registry("public.ecr.aws/sam/build-python3.13"),
        command=[
            "bash",
            "-c",
            "pip install --target /asset-output " + " ".join(f"'{r}'" for r in requirements) + copy,
        ],
        local=PipLocalBundling(requirements, copy_sources=copy_sources, sources=sources),
    )


def code_asset(
    requirements: tuple[str, ...], sources: tuple[str, ...] = SOURCE_PACKAGES
) -> lambda_.Code:
    """A zip asset holding gantry/, lambdas/ (or ``sources``) and the given requirements."""
    return lambda_.Code.from_asset(
        str(REPO_ROOT),
        asset_hash_type=AssetHashType.OUTPUT,
        bundling=bundling_options(requirements, copy_sources=True, sources=sources),
    )


class LambdaCode(Construct):
    """The code assets and the Powertools layer, created once and shared by all functions."""

    def __init__(self, scope: Construct, construct_id: str) -> None:
        super().__init__(scope, construct_id)
        imaging = project_requirements("imaging")
        too_big = tuple(r for r in imaging if _requirement_name(r) in OUTSIDE_THE_ZIP)
        self.core = code_asset(project_requirements())
        self.imaging = code_asset(tuple(r for r in imaging if r not in too_big))
        self.bioimageio = code_asset(bioimageio_validation_requirements(), BIOIMAGEIO_SOURCES)
        # SimpleITK's extension module alone is ~260 MB unzipped, over Lambda's 250 MB limit
        # for a zip function with its layers. It ships as a separate S3 archive that the
        # imaging functions unpack into /tmp on first use (see SIMPLEITK_ARCHIVE_ENV).
        self.simpleitk = s3_assets.Asset(
            self,
            "SimpleItkArchive",
            path=str(REPO_ROOT),
            asset_hash_type=AssetHashType.OUTPUT,
            bundling=bundling_options(too_big, copy_sources=False),
        )
        arch = layer_architecture(ARCHITECTURE)
        python = "python" + PYTHON_VERSION.replace(".", "")
        # The public layer is published in every commercial region under the same account.
        self.powertools = lambda_.LayerVersion.from_layer_version_arn(
            self,
            "Powertools",
            f"arn:{Aws.PARTITION}:lambda:{Aws.REGION}:{POWERTOOLS_ACCOUNT}:layer:"
            f"AWSLambdaPowertoolsPythonV3-{python}-{arch}:{powertools_layer_version()}",
        )

    def simpleitk_environment(self) -> dict[str, str]:
        return {SIMPLEITK_ARCHIVE_ENV: self.simpleitk.s3_object_url}

    def grant_simpleitk(self, grantee: iam.IGrantable) -> None:
        """Read of exactly the archive's key (Asset.grant_read would allow the whole bucket)."""
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["s3:GetObject"],
                resources=[
                    f"arn:{Aws.PARTITION}:s3:::{self.simpleitk.s3_bucket_name}/"
                    f"{self.simpleitk.s3_object_key}"
                ],
            )
        )

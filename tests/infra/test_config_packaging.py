"""Context parsing and Docker-free bundling, without synthesizing anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from aws_cdk import App

from infra.config import GantryConfig
from infra.packaging import PIP_PLATFORMS, PYTHON_VERSION, PipLocalBundling, project_requirements


def _config(**context: object) -> GantryConfig:
    app = App(context={f"gantry:{k}": v for k, v in context.items()})
    return GantryConfig.from_node(app.node)


def test_defaults_are_cheap_and_safe() -> None:
    config = _config()
    assert config.destroy_on_delete is False
    assert config.spot is False
    assert all(t.startswith("g4dn.") for t in config.gpu_instance_types)
    assert config.runner_privileged is True
    assert config.runner_sandbox == "required"
    assert config.sagemaker_sandbox == "required"


def test_every_memory_size_the_api_accepts_has_a_host() -> None:
    # The default CPU hosts: 16, 32 and 64 GiB; the GPU hosts 16, 32 and 64 GiB.
    _config()
    with pytest.raises(ValueError, match=r"cpuInstanceTypes must include .* 32 GiB"):
        _config(cpuInstanceTypes="c6i.2xlarge")
    with pytest.raises(ValueError, match=r"gpuInstanceTypes must include .* 32 GiB"):
        _config(gpuInstanceTypes="g4dn.xlarge")


def test_an_unknown_sagemaker_sandbox_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="sagemakerSandbox"):
        _config(sagemakerSandbox="off")


def test_unprivileged_runner_lets_the_runner_fall_back_to_no_sandbox() -> None:
    config = _config(runnerPrivileged="false")
    assert config.runner_privileged is False
    assert config.runner_sandbox == "auto"


def test_context_strings_are_parsed() -> None:
    config = _config(
        destroyOnDelete="true",
        spot="false",
        gpuInstanceTypes="g4dn.xlarge, g5.2xlarge",
        gpuMaxVcpus="8",
    )
    assert config.destroy_on_delete is True
    assert config.spot is False
    assert config.gpu_instance_types == ("g4dn.xlarge", "g5.2xlarge")
    assert config.gpu_max_vcpus == 8


def test_non_gpu_instance_types_are_refused() -> None:
    with pytest.raises(ValueError, match="not a GPU instance type"):
        _config(gpuInstanceTypes="c6i.large")


def test_cpu_hosts_are_one_size_so_each_job_takes_a_whole_one() -> None:
    assert _config().cpu_host_vcpus == 8
    assert _config(cpuInstanceTypes="c6i.4xlarge,r6i.4xlarge").cpu_host_vcpus == 16
    with pytest.raises(ValueError, match=r"same number of vCPUs.*c6i\.large has 2"):
        _config(cpuInstanceTypes="c6i.large,m6i.xlarge")
    with pytest.raises(ValueError, match="not known"):
        _config(cpuInstanceTypes="m6i.metal")


def test_domain_needs_a_certificate() -> None:
    with pytest.raises(ValueError, match="go together"):
        _config(domainName="gantry.example.org")


def test_requirements_come_from_pyproject_minus_the_runtime_provided() -> None:
    core = project_requirements()
    imaging = project_requirements("imaging")
    names = " ".join(core).lower()
    assert "pydantic" in names and "jsonschema" in names
    assert "boto3" not in names and "powertools" not in names
    assert any("simpleitk" in r.lower() for r in imaging)
    assert not any("simpleitk" in r.lower() for r in core)


def test_local_bundling_uses_pip_for_lambda_and_copies_the_packages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[list[str]] = []

    def fake_run(command: list[str], check: bool) -> subprocess.CompletedProcess[str]:
        calls.append(command)
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    assert PipLocalBundling(("pydantic>=2",)).try_bundle(str(tmp_path), object()) is True
    (command,) = calls
    assert "--only-binary=:all:" in command
    for platform in PIP_PLATFORMS:
        assert platform in command
    assert command[-1] == "pydantic>=2"
    assert (tmp_path / "gantry" / "resources.py").is_file()
    assert (tmp_path / "lambdas" / "__init__.py").is_file()
    # Bytecode for Lambda's Python cannot be made with another version: none is shipped.
    if f"{sys.version_info.major}.{sys.version_info.minor}" != PYTHON_VERSION:
        assert not list(tmp_path.rglob("__pycache__"))


def test_the_import_functions_asset_holds_the_bioimageio_validator_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from infra.packaging import BIOIMAGEIO_SOURCES, bioimageio_validation_requirements

    requirements = bioimageio_validation_requirements()
    names = " ".join(requirements).lower()
    assert "bioimageio.spec" in names and "pyyaml" in names and "pydantic" in names
    # Validating needs neither the runtime's onnxruntime nor SimpleITK (too big for a zip).
    assert "onnxruntime" not in names and "simpleitk" not in names and "gantry" not in names
    monkeypatch.setattr(
        subprocess, "run", lambda command, check: subprocess.CompletedProcess(command, 0)
    )
    PipLocalBundling(requirements, sources=BIOIMAGEIO_SOURCES).try_bundle(str(tmp_path))
    assert (tmp_path / "batch_runner" / "bioimageio" / "package.py").is_file()
    assert (tmp_path / "batch_runner" / "__init__.py").is_file()
    assert not (tmp_path / "batch_runner" / "invoke.py").exists()
    assert (tmp_path / "lambdas" / "on_import.py").is_file()


def test_bundling_for_the_hosts_python_ships_bytecode_lambda_never_rechecks(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.setattr(
        subprocess, "run", lambda command, check: subprocess.CompletedProcess(command, 0)
    )
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    PipLocalBundling(("pydantic>=2",), python_version=version).try_bundle(str(tmp_path))

    cache_tag = sys.implementation.cache_tag
    compiled = tmp_path / "gantry" / "__pycache__" / f"resources.{cache_tag}.pyc"
    # Flags 0b01: hash-based and not checked against the source (the zip's times may differ).
    assert int.from_bytes(compiled.read_bytes()[4:8], "little") == 0b01

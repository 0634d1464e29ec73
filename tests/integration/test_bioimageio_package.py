"""bioimage.io model packages: validation offline, interfaces, and the errors of bad packages."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("bioimageio.spec")
pytest.importorskip("onnx")

from batch_runner.bioimageio.package import load_plan, validate_package
from batch_runner.bioimageio.plan import PackageError
from batch_runner.bioimageio.runtime import check_test_tensors
from gantry.interfaces import InterfaceFields
from tests.bioimageio_support import build_package


@pytest.mark.parametrize("format_version", ["0.4", "0.5"])
def test_a_package_maps_to_image_interfaces(tmp_path: Path, format_version: str) -> None:
    package = build_package(tmp_path / "model", format_version=format_version)

    summary = validate_package(package.zip_path)

    assert summary["weights_format"] == "onnx"
    assert summary["format_version"].startswith(format_version)
    assert [i["relative_path"] for i in summary["inputs"]] == ["images/raw"]
    assert [o["relative_path"] for o in summary["outputs"]] == ["images/prob"]
    assert "2 channel(s) as vector components" in summary["outputs"][0]["description"]
    for interface in summary["inputs"] + summary["outputs"]:
        assert InterfaceFields.model_validate(interface).kind.value == "IMG"


@pytest.mark.slow
@pytest.mark.parametrize("format_version", ["0.4", "0.5"])
@pytest.mark.parametrize("ndim", [2, 3])
def test_the_runtime_reproduces_the_test_outputs(
    tmp_path: Path, format_version: str, ndim: int
) -> None:
    shape = (96, 80) if ndim == 2 else (32, 48, 32)
    package = build_package(
        tmp_path / "model", format_version=format_version, ndim=ndim, test_shape=shape
    )
    plan = load_plan(package.directory)

    # Small tiles force several tiles (and batches of them) on the test input as well.
    assert check_test_tensors(plan)["prob"] < 1e-5
    assert check_test_tensors(plan, max_tile=64)["prob"] < 1e-5


def _rewrite(package_dir: Path, edit: Any) -> Path:
    """Re-zip ``package_dir`` after ``edit(folder)``."""
    edit(package_dir)
    archive = package_dir.with_suffix(".zip")
    archive.unlink()
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted(package_dir.iterdir()):
            zipped.write(path, path.name)
    return archive


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _time_axis(rdf: dict[str, Any]) -> None:
    rdf["inputs"][0]["axes"].insert(1, {"type": "time"})


def _unknown_op(rdf: dict[str, Any]) -> None:
    rdf["inputs"][0]["preprocessing"].append({"id": "frobnicate", "kwargs": {}})


def _bad_sha(rdf: dict[str, Any]) -> None:
    rdf["weights"]["onnx"]["sha256"] = "0" * 64


def _remote_weights(rdf: dict[str, Any]) -> None:
    rdf["weights"]["onnx"]["source"] = "https://example.org/model.onnx"


def _one_spatial_statistic(rdf: dict[str, Any]) -> None:
    rdf["inputs"][0]["preprocessing"][0]["kwargs"]["axes"] = ["x"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_time_axis, "invalid model package"),
        (_unknown_op, "invalid model package: inputs.0.preprocessing"),
        (_bad_sha, r"weights\.onnx: .*SHA256 mismatch for model\.onnx"),
        (_remote_weights, "remote files"),
        (_one_spatial_statistic, "statistics must reduce all spatial axes together"),
    ],
)
def test_bad_packages_are_refused_with_a_reason(tmp_path: Path, edit: Any, message: str) -> None:
    package = build_package(tmp_path / "model", edit=edit)

    with pytest.raises(PackageError, match=message):
        validate_package(package.zip_path)


@pytest.mark.parametrize("where", ["absolute", "climbing"])
def test_files_outside_the_package_are_refused_unread(tmp_path: Path, where: str) -> None:
    # A file of the validating machine: validation would read it and report its sha256.
    secret = tmp_path / "secret.txt"
    secret.write_text("hunter2\n")
    source = str(secret) if where == "absolute" else "../../../../../../../" + str(secret)

    def outside(rdf: dict[str, Any]) -> None:
        rdf["weights"]["onnx"]["source"] = source
        rdf["weights"]["onnx"]["sha256"] = "0" * 64

    package = build_package(tmp_path / "model", edit=outside)

    with pytest.raises(PackageError, match=r"outside itself.*weights\.onnx\.source") as error:
        validate_package(package.zip_path)
    assert _sha(secret) not in str(error.value)


def test_a_time_axis_is_named_in_the_error(tmp_path: Path) -> None:
    package = build_package(tmp_path / "model", edit=_time_axis)

    with pytest.raises(PackageError) as error:
        validate_package(package.zip_path)

    assert "time" in str(error.value)


def test_missing_weights_are_refused(tmp_path: Path) -> None:
    package = build_package(tmp_path / "model")
    archive = _rewrite(package.directory, lambda folder: (folder / "model.onnx").unlink())

    with pytest.raises(PackageError, match=r"weights\.onnx\.source.*model\.onnx"):
        validate_package(archive)


def test_missing_test_tensors_are_refused(tmp_path: Path) -> None:
    package = build_package(tmp_path / "model", format_version="0.4")
    archive = _rewrite(package.directory, lambda folder: (folder / "test_output.npy").unlink())

    with pytest.raises(PackageError, match="test_output"):
        validate_package(archive)


def test_weights_that_do_not_reproduce_the_test_output_are_refused(tmp_path: Path) -> None:
    import numpy as np

    def wrong_output(folder: Path) -> None:
        np.save(folder / "test_output.npy", np.load(folder / "test_output.npy") + 0.5)

    package = build_package(tmp_path / "model")
    wrong_output(package.directory)
    sha = _sha(package.directory / "test_output.npy")
    package = build_package(
        tmp_path / "model",
        edit=lambda rdf: rdf["outputs"][0]["test_tensor"].update(sha256=sha),
    )
    wrong_output(package.directory)

    with pytest.raises(PackageError, match="do not reproduce the test output"):
        check_test_tensors(load_plan(package.directory))


def test_unsupported_weight_formats_are_refused(tmp_path: Path) -> None:
    def keras_only(folder: Path) -> None:
        (folder / "model.h5").write_bytes(b"not really keras")

    package = build_package(tmp_path / "model")
    keras_only(package.directory)
    sha = _sha(package.directory / "model.h5")

    def edit(rdf: dict[str, Any]) -> None:
        rdf["weights"] = {
            "keras_hdf5": {"source": "model.h5", "sha256": sha, "tensorflow_version": "2.15"}
        }

    package = build_package(tmp_path / "model", edit=edit)
    keras_only(package.directory)

    with pytest.raises(PackageError, match=r"unsupported format.*keras_hdf5"):
        load_plan(package.directory)


def test_custom_python_operations_are_refused(tmp_path: Path) -> None:
    code = "def threshold(level=0.5):\n    return lambda x: x > level\n"

    def add_code(folder: Path) -> None:
        (folder / "custom.py").write_text(code)

    package = build_package(tmp_path / "model")
    add_code(package.directory)
    sha = _sha(package.directory / "custom.py")

    def edit(rdf: dict[str, Any]) -> None:
        rdf["outputs"][0]["postprocessing"] = [
            {"id": "custom", "callable": "threshold", "source": "custom.py", "sha256": sha}
        ]

    package = build_package(tmp_path / "model", edit=edit)
    add_code(package.directory)

    with pytest.raises(PackageError, match="custom Python operations"):
        load_plan(package.directory)

    # Allowed, the package's own function runs on the whole output (here: y > 0.5 on the
    # raw model output, then the float32 the description ends with).
    plan = load_plan(package.directory, allow_custom_ops=True)
    from batch_runner.bioimageio import predict, weights
    from tests.bioimageio_support import run_onnx

    image = np.random.default_rng(3).normal(0, 1, (1, 1, 96, 80)).astype(np.float32)
    result = predict.predict_array(plan, weights.load(plan), image)["prob"]
    padded = np.pad(
        (image - image.mean()) / (image.std() + 1e-6),
        [(0, 0)] * 2 + [(16, 16)] * 2,
        mode="symmetric",
    )
    raw = run_onnx(package.model_path, padded)[:, :, 16:-16, 16:-16]
    assert result.dtype == np.float32
    assert np.mean(result != (raw > 0.5)) < 1e-3


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("affable-shark", "zoo id"),
        ("https://zenodo.org/records/1/files/model.zip", "is a URL"),
        ("/nowhere/model.zip", "does not exist"),
    ],
)
def test_zoo_ids_and_urls_are_refused(source: str, message: str) -> None:
    with pytest.raises(PackageError, match=message):
        validate_package(source)


def test_an_archive_escaping_its_folder_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("../rdf.yaml", "type: model\n")

    with pytest.raises(PackageError, match="unsafe path"):
        validate_package(archive)


def test_the_api_import_path_loads_no_bioimageio_code() -> None:
    import subprocess
    import sys

    probe = (
        "import sys, lambdas.api.app, lambdas.on_upload, lambdas.on_import, "
        "lambdas.on_job_event, gantry.cli; "
        "heavy = [m for m in sys.modules if m.split('.')[0] in "
        "('bioimageio', 'onnxruntime', 'onnx', 'torch', 'numpy', 'SimpleITK') "
        "or m.startswith('batch_runner.bioimageio')]; "
        "print(heavy)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)

    assert done.stdout.strip() == "[]"


def _alias_bomb() -> str:
    """A dozen lines that YAML aliases make stand for 9**9 (387 million) strings."""
    lines = ["type: model", 'a0: &a0 ["x","x","x","x","x","x","x","x","x"]']
    for level in range(1, 9):
        lines.append(f"a{level}: &a{level} [" + ",".join([f"*a{level - 1}"] * 9) + "]")
    lines.append("weights: {onnx: {source: *a8}}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (_alias_bomb(), "more than 200000 entries"),
        ("type: model\nx: " + "[" * 50_000 + "]" * 50_000 + "\n", "nested too deeply"),
    ],
)
def test_a_hostile_rdf_is_refused_at_once(tmp_path, text, message) -> None:

    (tmp_path / "rdf.yaml").write_text(text)
    with pytest.raises(PackageError, match=message):
        load_plan(tmp_path)


def test_a_package_of_very_many_files_is_refused_before_it_is_read(tmp_path: Path) -> None:
    archive = tmp_path / "many.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for n in range(10_001):
            zipped.writestr(f"f{n}", b"")

    with pytest.raises(PackageError, match="more than 10000 files"):
        validate_package(archive)

"""Synthesize the CDK app offline, once per test module.

Bundling is skipped (``aws:cdk:bundling-stacks: []``): the tests check the template, not the
zip. cdk-nag runs on every synth and makes it raise on any unacknowledged finding.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# Node 20 banners on every jsii call are noise in test output.
os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "1")

SKIP_BUNDLING: dict[str, Any] = {"aws:cdk:bundling-stacks": []}
# Every optional feature switched on, so the checks cover the other branches too.
ALL_OPTIONS = {
    "gantry:destroyOnDelete": "true",
    "gantry:spot": True,
    "gantry:domainName": "gantry.example.org",
    "gantry:certificateArn": "arn:aws:acm:us-east-1:123456789012:certificate/0000",
    "gantry:wafAclArn": "arn:aws:wafv2:us-east-1:123456789012:regional/webacl/gantry/0000",
    "gantry:alarmEmail": "ops@example.org",
    "gantry:computeBackend": "sagemaker",
    "gantry:jobEventsReservedConcurrency": 20,
    # The explicit opt-out of the privileged runner (and with it of the required sandbox).
    "gantry:runnerPrivileged": "false",
    "gantry:sagemakerSandbox": "auto",
    "gantry:bioimageioImage": "123456789012.dkr.ecr.us-east-1.amazonaws.com/gantry@sha256:"
    + "0" * 64,
    "gantry:bioimageioGpuImage": "123456789012.dkr.ecr.us-east-1.amazonaws.com/gantry@sha256:"
    + "1" * 64,
}


@dataclass
class Synth:
    outdir: Path
    template: dict[str, Any]

    @property
    def template_path(self) -> Path:
        return self.outdir / "Gantry.template.json"

    def resources(self, kind: str) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.template["Resources"].items() if v["Type"] == kind}

    def runner_containers(self) -> dict[str, dict[str, Any]]:
        """ContainerProperties of each Batch job definition, by definition name."""
        return {
            d["Properties"]["JobDefinitionName"]: d["Properties"]["ContainerProperties"]
            for d in self.resources("AWS::Batch::JobDefinition").values()
        }

    def one(self, kind: str) -> dict[str, Any]:
        found = list(self.resources(kind).values())
        assert len(found) == 1, f"expected one {kind}, found {len(found)}"
        return found[0]


# An importer image as an operator names one (the import job is part of the tested stack).
IMPORTER_IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/gantry-importer:1"


def runner_layer_stand_in(folder: Path) -> Path:
    """A small file where ``make runner``'s layer would be (the stack packs it as is)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "gantry-runner-layer.tar"
    path.write_bytes(b"\0" * 10240)
    return path


def synthesize(outdir: Path, **context: Any) -> Synth:
    from infra.stack import create_app

    # The runner layer is built by 'make runner', which the tests do not need.
    layer = runner_layer_stand_in(outdir.parent / f"{outdir.name}-runner-layer")
    context = {"gantry:runnerLayer": str(layer), "gantry:importerImage": IMPORTER_IMAGE, **context}
    create_app({**SKIP_BUNDLING, **context}, outdir=str(outdir)).synth()
    template = json.loads((outdir / "Gantry.template.json").read_text())
    return Synth(outdir=outdir, template=template)


@pytest.fixture(scope="module")
def default_synth(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    return synthesize(tmp_path_factory.mktemp("cdk-default"))


@pytest.fixture(scope="module")
def options_synth(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    return synthesize(tmp_path_factory.mktemp("cdk-options"), **ALL_OPTIONS)

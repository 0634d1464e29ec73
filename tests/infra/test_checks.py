"""cdk-nag (AWS Solutions) and cfn-lint on every synthesized template variant."""

from __future__ import annotations

import json

import pytest
from aws_cdk import App, Stack, Validations
from aws_cdk import aws_sqs as sqs
from cdk_nag import AwsSolutionsChecks
from cfnlint.api import lint_all

from tests.infra.conftest import Synth

pytestmark = pytest.mark.slow

# Redundant DependsOn next to a GetAtt: CDK emits these; they are harmless.
ALLOWED_WARNINGS = {"W3005"}


@pytest.fixture(scope="module", params=["default", "options"])
def synth(request: pytest.FixtureRequest) -> Synth:
    return request.getfixturevalue(f"{request.param}_synth")


def test_cdk_nag_has_no_unacknowledged_findings(synth: Synth) -> None:
    # create_app() registers AwsSolutionsChecks; any finding would have made synth raise.
    report = json.loads((synth.outdir / "validation-report.json").read_text())
    failures = [
        r for r in report["pluginReports"] if r.get("summary", {}).get("status") != "success"
    ]
    assert not failures, json.dumps(failures, indent=1)[:4000]


def test_cdk_nag_is_really_enforced(tmp_path) -> None:
    """Control: the same plugin wiring rejects an obviously non-compliant resource."""
    app = App(outdir=str(tmp_path))
    stack = Stack(app, "Control")
    sqs.Queue(stack, "Bare")  # no DLQ, no TLS-only policy
    Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    with pytest.raises(RuntimeError, match="AwsSolutions-SQS3"):
        app.synth()


def test_cfn_lint_reports_no_errors(synth: Synth) -> None:
    matches = lint_all(synth.template_path.read_text())
    errors = [m for m in matches if m.rule.id.startswith("E")]
    assert not errors, "\n".join(str(m) for m in errors)
    unexpected = [
        m for m in matches if m.rule.id not in ALLOWED_WARNINGS and not m.rule.id.startswith("I")
    ]
    assert not unexpected, "\n".join(str(m) for m in unexpected)

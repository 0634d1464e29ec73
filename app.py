#!/usr/bin/env python3
"""Entry point of ``cdk synth`` / ``cdk deploy`` (see cdk.json and docs/deploy.md)."""

from infra.stack import create_app

create_app().synth()

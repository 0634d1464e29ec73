"""The synthesized template of the default deployment, shared with the infra tests."""

from tests.infra.conftest import default_synth

__all__ = ["default_synth"]

"""The conformance battery (tests/conformance.py) on Predict1's tiny spec."""

from __future__ import annotations

from pathlib import Path

from cosmos_plugins.predict1.specs import PREDICT1_TINY
from tests.conformance import BackendConformance
from tests.conftest import checkpoint_folder


class TestConformancePredict1(BackendConformance):
    model = PREDICT1_TINY.name
    split_says = "the two guidance branches on two groups of 1"  # --cp-scheme auto's choice for two ranks

    def write_checkpoint(self, root: Path) -> None:
        checkpoint_folder(root, PREDICT1_TINY, seed=0)

"""Shared test helpers: where the shared data lives."""
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data() -> Path:
    "The shared data folder: $VNC_SHARED_DATA, else ../shared/data beside the repo."
    return Path(os.environ.get("VNC_SHARED_DATA", REPO.parent / "shared" / "data"))


def need_shared(*parts: str) -> Path:
    "Path to a shared data file or folder; skip the test (with the reason) when it is absent."
    p = shared_data().joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared data {p} is absent (set VNC_SHARED_DATA to its folder)")
    return p

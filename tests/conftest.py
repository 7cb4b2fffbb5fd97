"""Shared test helpers."""
from pathlib import Path

import pytest

from vibenanochat.assets import asset

REPO = Path(__file__).resolve().parents[1]


def need_asset(name: str) -> Path:
    "Local path of a data asset (see vibenanochat.assets); skip the test, naming the asset, when it cannot be had."
    try:
        return asset(name)
    except FileNotFoundError as e:
        pytest.skip(f"needs the downloadable asset {name}: {e}")


def need_shared(*parts: str) -> Path:   # TODO(lead): remove once every test uses need_asset
    return need_asset("/".join(parts))

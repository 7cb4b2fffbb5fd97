"""Every chapter runs top to bottom through nbdev's own test runner: one pytest case per notebook."""
from pathlib import Path

import pytest
from nbdev.config import get_config
from nbdev.test import test_nb as run_notebook

NBS = sorted(p for p in (Path(__file__).resolve().parents[1] / "nbs").glob("*.ipynb") if not p.name.startswith("_"))


@pytest.mark.parametrize("nb", NBS, ids=[p.stem for p in NBS])
def test_notebook(nb: Path):
    skip = get_config().tst_flags.split()
    ok, secs = run_notebook(nb, skip_flags=skip, showerr=True)
    assert ok, f"{nb.name} failed under nbdev's test runner (see the traceback above)"

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BCCD = REPO.parent / "shared" / "datasets" / "bccd"


@pytest.fixture(autouse=True, scope="session")
def _cache_dir(tmp_path_factory):
    """Synthetic datasets go to one session cache, never the user's home."""
    os.environ.setdefault("NANXI_TUNE_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield

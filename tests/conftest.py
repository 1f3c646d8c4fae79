import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
TRAIN_PHOTOS = REPO.parent / "shared" / "photos" / "train"
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def examples_dir() -> Path:
    return EXAMPLES

"""Fixtures for the model tests: small generated tasks and the Tatoeba file path."""

from __future__ import annotations

from pathlib import Path

import pytest

from attntune.model.config import TaskConfig
from attntune.model.data import TaskData, load_task

REPO = Path(__file__).resolve().parents[2]
TATOEBA = REPO.parent / "shared" / "data" / "tatoeba-cmn-eng" / "cmn.txt"
ATTRIBUTION = "Tatoeba (tatoeba.org), CC-BY 2.0 FR, via manythings.org/anki"


@pytest.fixture(scope="session")
def reverse_data() -> TaskData:
    """A small reverse task (shared, read-only)."""
    return load_task(
        TaskConfig(name="reverse", n_train=600, val_size=64, test_size=32, n_symbols=10, min_seq_len=3, max_seq_len=8)
    )


@pytest.fixture(scope="session")
def tatoeba_path() -> Path:
    if not TATOEBA.is_file():  # the file ships with the project's shared data, in CI too
        pytest.fail(f"Tatoeba data missing: expected {TATOEBA}")
    return TATOEBA


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and OpenMP threads crawl on a shared, busy machine."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)

"""Shared test setup: hypothesis profiles and the path to the shared real data."""

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# "ci": derandomized (the same examples every run), bounded, no deadline (2 shared cores are noisy).
settings.register_profile("ci", derandomize=True, max_examples=25, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# "dev": random examples, more of them, to find new failures on a developer's machine.
settings.register_profile("dev", max_examples=100, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Real images, weights and labels live beside the checkout (../shared/data), never in the repository.
SHARED_DATA = Path(os.environ.get("MOBILENET_NP_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The ../shared/data folder; tests that need it are skipped (with the reason) when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (set MOBILENET_NP_SHARED_DATA to use another)")
    return SHARED_DATA

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


@pytest.fixture(autouse=True, scope="session")
def one_thread_for_torch_and_blas():
    """The test networks are small: one thread runs them about as fast as two, and on a shared 2-core
    machine the spinning thread pools of torch and BLAS fighting over the cores made tests 10x slower.
    (The fast path's own worker threads are tested in test_fast.py.)"""
    from threadpoolctl import threadpool_limits

    try:
        import torch
    except ImportError:  # the runtime tests do not need torch
        torch = None
    threads = torch.get_num_threads() if torch else None
    if torch:
        torch.set_num_threads(1)
    with threadpool_limits(limits=1, user_api="blas"):
        yield
    if torch:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The ../shared/data folder; tests that need it are skipped (with the reason) when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (set MOBILENET_NP_SHARED_DATA to use another)")
    return SHARED_DATA

"""Tests run on tiny data: one torch thread is much faster there than two busy ones."""
import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def isolated_cache(tmp_path_factory):
    """The module's graph caches in a temporary folder (``MMRECSYS_CACHE``), one torch thread
    (tiny tensors: threads only add synchronisation cost, large when other processes share
    the cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MMRECSYS_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield
    torch.set_num_threads(threads)

import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    """Every test starts from the same torch seed and one thread (results do not depend on the machine)."""
    torch.manual_seed(0)
    torch.set_num_threads(1)

import os

import pytest
import torch
from hypothesis import settings

# One thread: on a shared 2-core machine, two torch threads next to another busy
# process made single gradcheck runs take minutes.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")

settings.register_profile("ci", deadline=None, max_examples=30, derandomize=True)
settings.load_profile("ci")

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))]


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param

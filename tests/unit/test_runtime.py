"""tune_allocator: applies on glibc (Linux CI), is idempotent, and changes no result."""
import platform

import torch

import analogformer as af


def test_tune_allocator_applies_on_glibc_and_is_idempotent():
    x = torch.randn(2048, 2048, generator=torch.Generator().manual_seed(0))
    before = (x @ x).sum()
    ok = af.tune_allocator()
    assert isinstance(ok, bool)
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert ok
    assert af.tune_allocator() == ok
    assert torch.equal((x @ x).sum(), before)  # 16 MB temporaries now come from the heap

"""Which GPU the kit reads through NVML: CUDA's device 0, the first of $CUDA_VISIBLE_DEVICES."""

import pytest

from sglkit import nvml


@pytest.mark.parametrize(
    ("value", "gpu"),
    [(None, 0), ("0", 0), ("3", 3), ("2,0,1", 2), (" 1 , 0", 1),
     ("GPU-8f2a3c4d-0000-1111-2222-333344445555,1", "GPU-8f2a3c4d-0000-1111-2222-333344445555"),
     ("MIG-0a1b2c3d-4e5f-6789-abcd-ef0123456789", "MIG-0a1b2c3d-4e5f-6789-abcd-ef0123456789")],
)  # fmt: skip
def test_gpu0_is_the_first_visible_device(monkeypatch, value, gpu):
    if value is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    assert nvml.visible_gpu0() == gpu
    # the server's environment, where a profile sets the variable, wins over the process's
    assert nvml.visible_gpu0({"CUDA_VISIBLE_DEVICES": "5"}) == 5
    assert nvml.visible_gpu0({}) == 0


@pytest.mark.parametrize("value", ["", "-1", "none", " ,1"])
def test_a_variable_that_hides_every_gpu_is_an_error_naming_it(monkeypatch, value):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    with pytest.raises(RuntimeError, match=r"CUDA_VISIBLE_DEVICES=.* makes no GPU visible"):
        nvml.visible_gpu0()

"""The one rule for a global batch size: at least 1, split evenly over processes, devices and micro-batches."""

import pytest

from fmjax.core.batch_size import check_global_batch_size, per_device_batch_size
from fmjax.errors import UserError


def test_a_batch_that_splits_evenly_passes():
    check_global_batch_size(16, num_devices=8)
    check_global_batch_size(32, num_devices=8, grad_accum_steps=4)
    check_global_batch_size(12, process_count=4)


@pytest.mark.parametrize("size", [0, -8])
def test_a_batch_below_one_is_a_user_error(size):
    with pytest.raises(UserError, match=f"^global batch size {size} must be at least 1"):
        check_global_batch_size(size)


def test_a_batch_that_does_not_split_over_the_processes_is_a_user_error():
    with pytest.raises(UserError, match="does not split evenly over 4 processes; make it a multiple of 4"):
        check_global_batch_size(30, process_count=4)


def test_a_batch_that_does_not_divide_by_the_devices_is_a_user_error():
    with pytest.raises(UserError, match=r"config.batch_size=12 does not divide by the 8 devices"):
        check_global_batch_size(12, num_devices=8)


def test_a_batch_that_does_not_split_into_micro_batches_is_a_user_error():
    with pytest.raises(UserError) as error:
        check_global_batch_size(24, num_devices=8, grad_accum_steps=2)
    assert str(error.value) == (
        "config.batch_size=24 does not split into 8 devices x 2 micro-batches "
        "(config.grad_accum_steps); set it to a multiple of 16"
    )
    with pytest.raises(UserError, match="into 1 device x 5 micro-batches"):
        check_global_batch_size(12, grad_accum_steps=5)


def test_one_device_gets_its_share_of_a_checked_batch():
    assert per_device_batch_size(64, 8, grad_accum_steps=4) == 8
    with pytest.raises(UserError, match="does not divide by the 8 devices"):
        per_device_batch_size(4, 8)

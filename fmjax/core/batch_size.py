"""How a global batch splits: over processes, over devices, into micro-batches.

The one rule every layer checks a global batch size against: the data path
(each process's share), the data-parallel steps (each device's share and its
micro-batches) and the dry run (one device's batch). It lives in the core,
below all of them, because the data layer needs it and may not import the
parallel layer.
"""

from fmjax.errors import UserError


def check_global_batch_size(
    global_batch_size: int,
    *,
    process_count: int = 1,
    num_devices: int = 1,
    grad_accum_steps: int = 1,
) -> None:
    """Raises a UserError unless the global batch is at least 1 and splits evenly into its parts.

    Args:
      global_batch_size: examples per step, over every device of every process.
      process_count: processes that each read an equal share.
      num_devices: devices (of every process) that each get an equal share.
      grad_accum_steps: micro-batches each device's share splits into.
    """
    if global_batch_size < 1:
        raise UserError(
            f"global batch size {global_batch_size} must be at least 1; raise the batch size"
        )
    if global_batch_size % process_count:
        raise UserError(
            f"global batch size {global_batch_size} does not split evenly over "
            f"{process_count} processes; make it a multiple of {process_count}"
        )
    if grad_accum_steps == 1 and global_batch_size % num_devices:
        raise UserError(
            f"config.batch_size={global_batch_size} does not divide by the "
            f"{num_devices} devices; set it to a multiple of {num_devices}"
        )
    parts = num_devices * grad_accum_steps
    if global_batch_size % parts:
        raise UserError(
            f"config.batch_size={global_batch_size} does not split into {num_devices} "
            f"device{'s' * (num_devices != 1)} x "
            f"{grad_accum_steps} micro-batches (config.grad_accum_steps); set it to a multiple of {parts}"
        )


def per_device_batch_size(global_batch_size: int, num_devices: int, grad_accum_steps: int = 1) -> int:
    """Examples one device sees per step, once the global batch is checked (check_global_batch_size)."""
    check_global_batch_size(
        global_batch_size, num_devices=num_devices, grad_accum_steps=grad_accum_steps
    )
    return global_batch_size // num_devices

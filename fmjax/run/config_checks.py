"""Every config value checked before anything is read or written.

`check_config(config)` raises a UserError naming the first key whose value
cannot work (a wrong type, out of range, a name fmjax does not know, an image
smaller than the model's kernel), so a bad value costs one line and exit
status 2 instead of a traceback, a silently wrong run or a damaged workdir.

The checks are pure functions of the config; each reads the keys of one
group and knows the rule and the remedy. A key added to the config gets its
check here.
"""

import math
import numbers
from typing import Any, Callable, Iterable, Optional, Sequence

import ml_collections

from fmjax.core.losses import LOSSES
from fmjax.core.models import (
    ACTIVATIONS,
    CONV_IMPLEMENTATIONS,
    DENSE_IMPLEMENTATIONS,
    DTYPES,
    MODELS,
)
from fmjax.core.optim import OPTIMIZERS, SCHEDULES
from fmjax.core.steps import UPDATE_PLACEMENTS
from fmjax.data import CACHE_CHOICES
from fmjax.data import SOURCES as DATA_SOURCES
from fmjax.data.image_folder import BAD_IMAGE_CHOICES
from fmjax.errors import UserError
from fmjax.parallel.data_parallel import PARALLEL_MODES


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _get(config: ml_collections.ConfigDict, key: str) -> Any:
    value = config
    for part in key.split("."):
        value = value[part]
    return value


class _Checker:
    """Reads keys of one config and raises a UserError for the first bad one."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config

    def _fail(self, key: str, value: Any, rule: str) -> None:
        raise UserError(f"config.{key} is {value!r}; {rule}")

    def value(self, key: str) -> Any:
        try:
            return _get(self.config, key)
        except (KeyError, AttributeError):
            raise UserError(
                f"the config has no key {key!r}; start the config file from "
                "fmjax.config.base_config(), which names every key"
            ) from None

    def integer(self, key: str, minimum: int) -> int:
        value = self.value(key)
        if not _is_int(value) or value < minimum:
            self._fail(key, value, f"use a whole number of at least {minimum}")
        return value

    def number(
        self,
        key: str,
        *,
        above: Optional[float] = None,
        at_least: Optional[float] = None,
        below: Optional[float] = None,
        remedy: str = "",
    ) -> float:
        value = self.value(key)
        bounds = []
        if above is not None:
            bounds.append(f"above {above}")
        if at_least is not None:
            bounds.append(f"at least {at_least}")
        if below is not None:
            bounds.append(f"below {below}")
        ok = _is_number(value) and (
            (above is None or value > above)
            and (at_least is None or value >= at_least)
            and (below is None or value < below)
        )
        if not ok:
            rule = f"use a finite number {' and '.join(bounds)}".rstrip()
            self._fail(key, value, f"{rule}{remedy}")
        return value

    def boolean(self, key: str) -> bool:
        value = self.value(key)
        if not isinstance(value, bool):
            self._fail(key, value, "use True or False")
        return value

    def choice(self, key: str, choices: Sequence[str]) -> str:
        value = self.value(key)
        if value not in choices:
            self._fail(key, value, f"use one of {', '.join(choices)}")
        return value

    def sequence(self, key: str, each: Callable[[Any], bool], rule: str, length: Optional[int] = None) -> tuple:
        value = self.value(key)
        if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
            self._fail(key, value, rule)
        items = tuple(value)
        if (length is not None and len(items) != length) or not all(each(item) for item in items):
            self._fail(key, value, rule)
        return items

    def text(self, key: str) -> str:
        value = self.value(key)
        if not isinstance(value, str):
            self._fail(key, value, "use a string")
        return value


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raises a UserError naming the first value in `config` that cannot work.

    Call it before reading data or touching the workdir.
    """
    check = _Checker(config)
    check.integer("seed", 0)
    check.integer("num_seeds", 1)
    check.sequence(
        "sweep.learning_rates", lambda r: _is_number(r) and r > 0, "use a list of rates, each above 0"
    )
    check.integer("num_epochs", 1)
    check.integer("batch_size", 1)
    check.integer("grad_accum_steps", 1)
    check.number("learning_rate", above=0, remedy=" (a rate of 0 or below does not descend)")
    image_size = check.integer("image_size", 1)
    check.integer("num_classes", 1)
    check.choice("parallel", PARALLEL_MODES)
    check.boolean("shard_params")
    check.integer("shard_params_min_size", 0)
    check.integer("checkpoint_every_steps", 0)
    check.number("checkpoint_min_seconds", at_least=0)
    check.number("host_check_seconds", above=0)
    check.number("progress_line_seconds", at_least=0)
    check.integer("profile_steps", 0)
    check.text("compilation_cache_dir")
    check.integer("keep_checkpoints", 1)
    check.boolean("checkpoint_async")
    check.boolean("checkpoint_compression")
    check.boolean("halt_on_nonfinite")
    growth = check.value("halt_on_loss_growth")
    if not (_is_number(growth) and (growth == 0 or growth > 1)):
        check._fail("halt_on_loss_growth", growth, "use 0 (off) or a factor above 1, e.g. 1e4")
    check.choice("loss", tuple(LOSSES))
    check.number("label_smoothing", at_least=0, below=1)
    check.number("grad_clip_norm", at_least=0, remedy=" (0 turns clipping off)")
    _check_schedule(check)
    _check_data(check)
    _check_model(check, image_size)
    _check_optimizer(check)


def _check_schedule(check: _Checker) -> None:
    name = check.choice("schedule.name", SCHEDULES)
    check.number("schedule.warmup_epochs", at_least=0)
    check.number("schedule.end_learning_rate", at_least=0)
    check.sequence(
        "schedule.decay_epochs", lambda e: _is_number(e) and e >= 0, "use a list of epochs, each 0 or more"
    )
    check.number("schedule.decay_factor", above=0)
    if name == "warmup_cosine" and check.value("schedule.warmup_epochs") >= check.value("num_epochs"):
        check._fail(
            "schedule.warmup_epochs",
            check.value("schedule.warmup_epochs"),
            f"it leaves no step to decay in {check.value('num_epochs')} epochs; make it smaller than num_epochs",
        )


def _check_data(check: _Checker) -> None:
    source = check.choice("data.source", DATA_SOURCES)
    root, name = check.text("data.root"), check.text("data.name")
    check.text("data.data_dir")
    if source == "image_folder" and not root.strip():
        check._fail("data.root", root, "set it to the folder holding train/ and test/")
    if source == "tfds" and not name.strip():
        check._fail("data.name", name, 'set it to the TFDS data set\'s name, e.g. "mnist"')
    check.number("data.test_fraction", above=0, below=1)
    check.integer("data.split_seed", 0)
    check.boolean("data.normalize")
    three = "use 3 numbers, one per RGB channel"
    check.sequence("data.mean", _is_number, three, length=3)
    check.sequence("data.std", lambda s: _is_number(s) and s > 0, f"{three}, each above 0", length=3)
    check.integer("data.random_crop_padding", 0)
    check.boolean("data.horizontal_flip")
    check.choice("data.on_bad_image", BAD_IMAGE_CHOICES)
    check.text("data.prepared_dir")
    check.choice("data.cache", CACHE_CHOICES)
    check.number("data.device_cache_mb", at_least=0)
    check.number("data.host_cache_mb", at_least=0)


def _check_model(check: _Checker, image_size: int) -> None:
    name = check.choice("model.name", MODELS)
    check.integer("model.features", 1)
    kernel_size = check.integer("model.kernel_size", 1)
    check.integer("model.hidden", 1)
    check.sequence(
        "model.mlp_hidden", lambda w: _is_int(w) and w >= 1, "use a list of layer widths, each at least 1"
    )
    check.choice("model.activation", tuple(ACTIVATIONS))
    check.sequence(
        "model.resnet_stage_sizes",
        lambda n: _is_int(n) and n >= 1,
        "use a non-empty list of block counts, each at least 1",
    )
    if not tuple(check.value("model.resnet_stage_sizes")):
        check._fail("model.resnet_stage_sizes", (), "use a non-empty list of block counts, each at least 1")
    check.integer("model.resnet_width", 1)
    check.choice("model.dtype", tuple(DTYPES))
    check.choice("model.conv", CONV_IMPLEMENTATIONS)
    check.choice("model.dense", DENSE_IMPLEMENTATIONS)
    if name == "seed_cnn" and image_size < kernel_size:
        # A VALID convolution of a kernel larger than the image has no output.
        check._fail(
            "image_size",
            image_size,
            f"the seed CNN's {kernel_size}x{kernel_size} kernel needs images of at least "
            f"{kernel_size} pixels; raise image_size or lower model.kernel_size",
        )


def _check_optimizer(check: _Checker) -> None:
    check.choice("optimizer.name", OPTIMIZERS)
    check.number("optimizer.b1", at_least=0, below=1)
    check.number("optimizer.b2", at_least=0, below=1)
    check.number("optimizer.eps", above=0)
    check.number("optimizer.momentum", at_least=0)
    check.boolean("optimizer.nesterov")
    check.number("optimizer.weight_decay", at_least=0)
    check.choice("optimizer.update_placement", UPDATE_PLACEMENTS)

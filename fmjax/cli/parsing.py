"""Flags and configs, parsed one way for every command (absl flags, ml_collections configs).

Every command takes --verbose; those that read a config take --config (a file,
or a shipped config by name) with --config.KEY=VALUE overrides; --help prints
one line a flag. A mistake in any of them is a UserError (one line, status 2).
"""

import dataclasses
import difflib
import importlib.resources
import os
import re
import sys
from typing import Any, Callable, Optional, Sequence

# TensorFlow, when the tfds source imports it, logs a screenful; fmjax's own lines matter more.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import ml_collections  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from fmjax.cli.exits import HelpShown  # noqa: E402
from fmjax.errors import UserError  # noqa: E402


def _with_shipped_config(argv: Sequence[str]) -> list[str]:
    """argv with a --config that names a shipped config ("default", "cifar10.py") replaced by its file.

    A path to an existing file is kept as it is, so a user's own config, or
    a file of the same name in the current folder, wins.
    """
    argv = list(argv)
    found = _config_argument(argv)
    if found is None:
        return argv
    position, value = found
    name = value[:-3] if value.endswith(".py") else value
    if os.path.exists(value) or not re.fullmatch(r"[A-Za-z0-9_]+", name):
        return argv
    shipped = importlib.resources.files("fmjax.configs").joinpath(f"{name}.py")
    if shipped.is_file():
        argv[position] = argv[position][: -len(value)] + str(shipped)
    return argv


def shipped_config_names() -> list[str]:
    """The configs that `--config NAME` finds in any folder."""
    return sorted(
        entry.name[:-3]
        for entry in importlib.resources.files("fmjax.configs").iterdir()
        if entry.name.endswith(".py") and not entry.name.startswith("_")
    )


def _config_argument(argv: Sequence[str]) -> Optional[tuple[int, str]]:
    """(position, value) of --config in argv, read before absl parses it; argv[position] ends with the value."""
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return i, arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return i + 1, argv[i + 1]
    return None


def _config_path(argv: Sequence[str]) -> Optional[str]:
    """The --config value in argv (to name a missing file)."""
    found = _config_argument(argv)
    return found[1] if found else None


@dataclasses.dataclass(frozen=True)
class Parsed:
    """A command line, parsed.

    Attributes:
      flags: every flag's value (flags.verbose, and the command's own).
      config: the config with its overrides; None when the command reads none,
        or may read none and was given none.
      workdir: --workdir, or runs/<config name> when a config was given and
        no --workdir; None when the command has no --workdir.
      inputs: the arguments that are not flags (image files, run folders).
    """

    flags: flags.FlagValues
    config: Optional[ml_collections.ConfigDict]
    workdir: Optional[str]
    inputs: list[str]


def parse(
    argv: Sequence[str],
    usage: str,
    define_flags: Callable[[flags.FlagValues], None] = lambda flag_values: None,
    *,
    config: str = "required",
    workdir: str = "default",
    inputs: Optional[tuple[str, str]] = None,
) -> Parsed:
    """Parses a command's argv: --verbose, --config and --workdir as asked, then `define_flags`'s own.

    Args:
      argv: the command line, argv[0] the program.
      usage: the command's one-line usage, shown by --help.
      define_flags: defines the command's own flags on the FlagValues it gets.
      config: "required", "optional" (the run's config.json serves instead) or "none".
      workdir: "default" (runs/<config name>), "required" or "none".
      inputs: (NAME, help) when the command takes one or more arguments.

    Raises:
      HelpShown: after printing one line per flag, when argv asks for --help.
      UserError: anything wrong with the command line or the config file.
    """
    argv = _with_shipped_config(argv)
    flag_values = flags.FlagValues()
    if config != "none":
        config_flags.DEFINE_config_file(
            "config",
            None,
            "A config file in configs/, or a shipped config by name; override keys with --config.KEY=VALUE.",
            flag_values=flag_values,
            lock_config=True,
            sys_argv=list(argv),  # the overrides to define are read from here
        )
    if workdir != "none":
        default = " (default: runs/<config name>)" if workdir == "default" else ""
        flags.DEFINE_string("workdir", None, f"The run's directory{default}.", flag_values=flag_values)
    flags.DEFINE_bool("verbose", False, "Show tracebacks of errors.", flag_values=flag_values)
    define_flags(flag_values)
    if any(arg in ("--help", "-h", "--helpfull") for arg in argv[1:]):
        _print_help(flag_values, usage, inputs)
        raise HelpShown()
    path = _config_path(argv[1:]) if config != "none" else None
    if path is None and config == "required":
        raise UserError("no config given; pass --config configs/default.py (or another file in configs/)")
    if path is not None:
        _check_config_file(path)
        _forget_previous_config_module()
    try:
        arguments = flag_values(list(argv))[1:]
    except flags.Error as e:
        raise UserError(f"{e}; run with --help for the flags") from e
    except AttributeError as e:
        if "get_config" in str(e):
            raise UserError(
                f"config file {path} has no get_config(); define one that returns the config "
                "(see configs/default.py)"
            ) from e
        raise _unknown_key(flag_values, argv) from e
    except KeyError as e:
        raise _unknown_key(flag_values, argv) from e
    except SyntaxError as e:
        raise UserError(f"config file {path} has a syntax error at line {e.lineno}: {e.msg}; fix it") from e
    except Exception as e:  # noqa: BLE001 - the config file's own code failed
        raise UserError(
            f"config file {path} failed to load ({type(e).__name__}: {e}); fix it, or run with "
            "--verbose for the traceback"
        ) from e
    if inputs is None and arguments:
        raise UserError(f"unexpected argument {arguments[0]!r}; run with --help for the flags")
    if inputs is not None and not arguments:
        raise UserError(f"no {inputs[0]} given; pass {inputs[1][0].lower()}{inputs[1][1:].rstrip('.')}")
    run_dir = flag_values.workdir if workdir != "none" else None
    if run_dir is None and workdir != "none":
        if workdir == "required" or path is None:
            raise UserError("no --workdir given; pass --workdir DIR, a run's directory that train.py wrote")
        run_dir = os.path.join("runs", os.path.splitext(os.path.basename(path))[0])
    loaded = flag_values.config if path is not None else None
    return Parsed(flag_values, loaded, run_dir, arguments)


def _print_help(flag_values: flags.FlagValues, usage: str, inputs: Optional[tuple[str, str]]) -> None:
    print(f"{usage}\n\nflags:")
    for name in flag_values:
        flag = flag_values[name]
        if name != flag.name or name.startswith("config."):  # short aliases, config overrides
            continue
        print(f"  --{name}: {flag.help}")
    if inputs is not None:
        print(f"\narguments:\n  {inputs[0]} ...: {inputs[1]}")


def _forget_previous_config_module() -> None:
    # ml_collections loads a config file as the module "config_config" and, if one is
    # loaded already (a second command in one process), runs the new file in
    # the old module's namespace: a file without get_config() would silently
    # use the previous file's.
    import importlib.machinery

    name = "config_config"  # the flag's name, twice
    loader = getattr(sys.modules.get(name), "__loader__", None)
    if isinstance(loader, importlib.machinery.SourceFileLoader) and loader.name == name:
        del sys.modules[name]


def _check_config_file(path: str) -> None:
    if os.path.isdir(path):
        raise UserError(f"--config {path} is a folder; pass a config file in it, e.g. configs/default.py")
    if not os.path.exists(path):
        raise UserError(
            f"config file {path} does not exist; pass a config file, or a shipped config by name: "
            f"{', '.join(shipped_config_names())}"
        )
    if not os.path.isfile(path):
        raise UserError(f"--config {path} is not a regular file; pass a config file, e.g. configs/default.py")


def _config_keys(config: Any, prefix: str = "") -> list[str]:
    keys = []
    for key, value in config.items():
        keys.append(prefix + key)
        if isinstance(value, ml_collections.ConfigDict):
            keys += _config_keys(value, f"{prefix}{key}.")
    return keys


def _unknown_key(flag_values: flags.FlagValues, argv: Sequence[str]) -> UserError:
    """The first --config.KEY override whose KEY the config lacks, with the nearest key it has."""
    # The file loaded again without the overrides, for the keys it has.
    plain = [arg for arg in argv if not arg.startswith("--config.")]
    bare = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=bare, sys_argv=plain)
    bare(plain, known_only=True)
    known = _config_keys(bare.config) if isinstance(bare.config, ml_collections.ConfigDict) else []
    for arg in argv[1:]:
        match = re.match(r"--config\.([\w.]+)", arg)
        if match and match.group(1) not in known:
            key = match.group(1)
            near = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            return UserError(f"the config has no key {key!r}{hint}; see fmjax/config.py for every key")
    return UserError("a --config.KEY override names no key of the config; see fmjax/config.py for every key")


def define_distributed_flags(flag_values: flags.FlagValues) -> None:
    """Flags that make this process one of a multi-process run (see fmjax.parallel.distributed)."""
    flags.DEFINE_string(
        "coordinator_address", None,
        "HOST:PORT of process 0's coordinator in a multi-process run (or $JAX_COORDINATOR_ADDRESS).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "num_processes", None, "Processes in the run (or $JAX_NUM_PROCESSES).", flag_values=flag_values
    )
    flags.DEFINE_integer(
        "process_id", None, "This process, 0..num_processes-1 (or $JAX_PROCESS_ID).", flag_values=flag_values
    )
    flags.DEFINE_bool(
        "distributed", False,
        "Join a multi-process run that JAX detects (every worker of a TPU VM pod slice).",
        flag_values=flag_values,
    )


def join_process_group(flag_values: flags.FlagValues) -> None:
    """Initialises jax.distributed when the flags or environment name a multi-process run.

    Call it before anything imports the trainer's device code or touches a device.
    """
    from fmjax.parallel import distributed

    group = distributed.process_group(
        flag_values.coordinator_address,
        flag_values.num_processes,
        flag_values.process_id,
        auto_detect=flag_values.distributed,
    )
    if group is not None:
        distributed.initialize(group)



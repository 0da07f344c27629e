"""What the tests share: eight fake CPU devices (set before jax is first imported), the
repository's paths, one tiny run trained once for the session, and helpers that run the
commands and read what a run left behind. Test files import the helpers from here."""

import os
import sys

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# libtpu is installed (the tpu extra) but no TPU is attached: JAX stays on the CPU, quietly.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import atexit  # noqa: E402
import contextlib  # noqa: E402
import importlib.util  # noqa: E402
import pathlib  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

import fmjax.config  # noqa: E402

# The benchmarks and the seed's PyTorch models (scripts/benchmarks/, not installed)
# import as `benchmarks`, as they do when scripts/benchmark.py runs.
sys.path.append(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))

# Tests compare runs at 1e-5; keep matmuls in full float32 on every backend.
jax.config.update("jax_default_matmul_precision", "float32")

# Prepared data (config.data.prepared_dir) go to a folder of this test process, never to
# the user's ~/.cache/fmjax/prepared: base_config's default is replaced below, before any
# test or config file takes base_config, and TINY names the folder for train.py's children.
# Runs of a few seconds save at every epoch's end (checkpoint_min_seconds=0), as the
# resume tests expect; tests/test_checkpoint_clock.py covers the shipped interval.
PREPARED_DIR = tempfile.mkdtemp(prefix="fmjax-prepared-")
atexit.register(shutil.rmtree, PREPARED_DIR, ignore_errors=True)
shipped_base_config = fmjax.config.base_config


def _base_config_of_the_tests():
    config = shipped_base_config()
    config.data.prepared_dir = PREPARED_DIR
    config.checkpoint_min_seconds = 0.0
    return config


fmjax.config.base_config = _base_config_of_the_tests

ROOT = pathlib.Path(__file__).resolve().parent.parent
TRAIN_PY = str(ROOT / "train.py")
DEFAULT_CONFIG = str(ROOT / "configs" / "default.py")
# The tiny run: 8x8 digits, an fc1 of 32 units, 1347 training digits in batches of
# 64 (21 steps an epoch, the remainder dropped), two epochs, saved at each epoch's end.
TINY = [
    "--config", DEFAULT_CONFIG, "--config.image_size=8", "--config.model.hidden=32",
    "--config.batch_size=64", "--config.num_epochs=2", f"--config.data.prepared_dir={PREPARED_DIR}",
    "--config.checkpoint_min_seconds=0",
]
STEPS_PER_EPOCH, LAST_STEP = 21, 42
# A train.py child process: conftest's matmul precision, and lines that survive a SIGKILL.
CHILD_ENV = dict(os.environ, JAX_DEFAULT_MATMUL_PRECISION="float32", PYTHONUNBUFFERED="1")


def sigterm_from(step_wanted):
    """A stand-in for fmjax.run.trainer.watch_for_sigterm: a SIGTERM seen at `step_wanted` and every step after."""

    @contextlib.contextmanager
    def watch():
        yield lambda step: step >= step_wanted

    return watch


def train(*argv):
    """Runs the train command in this process; returns its exit status."""
    from fmjax import cli

    return cli.run(cli.train_main, ["train.py", *argv])


def evaluate(*argv):
    from fmjax import cli

    return cli.run(cli.evaluate_main, ["evaluate.py", *argv])


def predict(*argv):
    from fmjax import cli

    return cli.run(cli.predict_main, ["predict.py", *argv])


def train_tiny(workdir, *extra):
    """Trains (or resumes) the tiny run in `workdir`, `extra` flags last."""
    return train(*TINY, "--workdir", str(workdir), *extra)


def evaluate_tiny(workdir, *extra):
    return evaluate(*TINY, "--workdir", str(workdir), *extra)


def train_py(*argv):
    """The command line of train.py as a child process."""
    return [sys.executable, TRAIN_PY, *argv]


def load_config(name):
    """get_config() of configs/<name>.py."""
    path = ROOT / "configs" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def error_lines(capsys):
    """The lines on stderr, less tqdm's progress bars."""
    err = capsys.readouterr().err
    return [line for line in err.splitlines() if line.strip() and "it/s]" not in line and "s/it]" not in line]


def one_error_line(capsys):
    lines = error_lines(capsys)
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: "), lines
    return lines[0]


def snapshot(folder):
    """Every entry under `folder`: relative path -> (kind, size, mtime_ns, link target)."""
    entries = {}
    for directory, subdirectories, files in os.walk(folder):
        for name in subdirectories + files:
            path = os.path.join(directory, name)
            info = os.lstat(path)
            target = os.readlink(path) if os.path.islink(path) else None
            entries[os.path.relpath(path, folder)] = (info.st_mode >> 12, info.st_size, info.st_mtime_ns, target)
    return entries


def saved_steps(workdir):
    """The steps of the run's complete checkpoints, as fmjax's checkpoint manager lists them."""
    from fmjax.run import checkpoint as ckpt

    if not os.path.isdir(ckpt.checkpoint_dir(str(workdir))):
        return []
    manager = ckpt.checkpoint_manager(str(workdir), create=False)
    try:
        return sorted(manager.all_steps())
    finally:
        manager.close()


def newest_step(workdir):
    """The newest complete checkpoint's step, 0 if none, also while a run saves and deletes them."""
    while True:
        try:
            return max(saved_steps(workdir), default=0)
        # A step the run deleted while it was being listed: gone, or gone between
        # Orbax's exists() and is_dir() (NotADirectoryError).
        except (FileNotFoundError, NotADirectoryError):
            continue


def checkpoint_files(workdir, step):
    """Every regular file of the checkpoint at `step`, whatever Orbax names them."""
    from fmjax.run import checkpoint as ckpt

    folder = pathlib.Path(ckpt.checkpoint_dir(str(workdir))) / str(step)
    return sorted(path for path in folder.rglob("*") if path.is_file() and not path.is_symlink())


def is_text(path):
    try:
        path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def damage_checkpoint(workdir, step, arrays_only=False):
    """Cuts files of the checkpoint at `step` to half their size, without relying on Orbax's layout.

    Every regular file under the step's folder, or with `arrays_only` every one that is
    not text: the array data, so the metadata still reads and the arrays do not.
    """
    damaged = [path for path in checkpoint_files(workdir, step) if not (arrays_only and is_text(path))]
    assert damaged, f"no files to damage in step {step} of {workdir}"
    for path in damaged:
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size // 2)


def checkpoint_arrays(workdir, step):
    """The params, optimizer state and step of a run's checkpoint, by tree path, as numpy arrays."""
    import numpy as np
    import orbax.checkpoint as ocp

    from fmjax.run import checkpoint as ckpt

    manager = ckpt.checkpoint_manager(str(workdir), create=False)
    metadata = manager.item_metadata(step)["state"]
    item = {key: metadata[key] for key in ("params", "opt_state", "step")}
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
                item=item,
                restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item),
                partial_restore=True,
            )
        ),
    ).state
    return {jax.tree_util.keystr(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(restored)}


def prepared(dataset, batch, epoch=None):
    """A batch of pixels as the model gets it inside the compiled step (dataset.prepare), on the host."""
    return jax.device_get(dataset.prepare(batch, epoch))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The tiny run, trained once for the session; read it only (tiny_run_copy to write).

    At the session's end, a test that wrote into it fails here.
    """
    workdir = tmp_path_factory.mktemp("tiny") / "run"
    assert train_tiny(workdir) == 0
    before = snapshot(workdir)
    yield workdir
    assert snapshot(workdir) == before, "a test wrote into the shared tiny run; use tiny_run_copy"


@pytest.fixture
def tiny_run_copy(tiny_run, tmp_path):
    """A copy of the tiny run that the test may change."""
    workdir = tmp_path / "run"
    shutil.copytree(tiny_run, workdir, symlinks=True)
    return workdir


def pytest_collection_modifyitems(session, config, items):
    # The TPU plans compile for most of a minute in a subprocess of their own:
    # started as soon as the session knows it runs them, they overlap the other tests.
    # Under pytest-xdist each worker collects every test, so the plans start when
    # their worker reaches them, in parallel with the other worker's tests.
    if hasattr(config, "workerinput"):
        return
    for module in {item.module for item in items if item.module.__name__ == "test_tpu_plan"}:
        module.start_plans()


"""Hostile use: each defect found by trying bad input and faults, reproduced as found, now handled.

The rules behind them: a resumed run is the same run; nothing is deleted or
set aside because of the config; every config value is checked before
anything is written; writes into a workdir never follow links nor leave a
half-written file; a failed checkpoint write stops training at once; folder
walks visit each real file once and open only regular files; a user's
mistake is one line, with nothing after it.

The session's tiny run (conftest: 8x8 digits, fc1 of 32, two epochs of 21
steps) is read where a test only reads, and copied where a test changes it;
a resume that trains on asks for a third epoch.
"""

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import uuid

import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import (
    LAST_STEP,
    STEPS_PER_EPOCH,
    TINY,
    checkpoint_files,
    damage_checkpoint,
    error_lines,
    one_error_line,
    predict,
    saved_steps,
    snapshot,
    train_py,
)
from conftest import evaluate_tiny as evaluate
from conftest import train_tiny as train
from PIL import Image

from fmjax import cli
from fmjax.config import base_config
from fmjax.errors import UserError
from fmjax.run import checkpoint as ckpt
from fmjax.run import checkpoint_damage, checkpoint_reads, config_checks, files, rundir
from fmjax.run import identity as run_identity

MORE = "--config.num_epochs=3"  # a resume that trains an epoch past the tiny run


# ---- 1. A resume with another optimizer setting threw away every checkpoint.


@pytest.mark.parametrize(
    "change, named",
    [
        ("--config.optimizer.name=sgd", "config.optimizer.name 'adam' -> 'sgd'"),
        ("--config.grad_clip_norm=1.0", "config.grad_clip_norm 0.0 -> 1.0"),
    ],
)
def test_1_a_resume_with_another_optimizer_is_refused_touching_nothing(tiny_run_copy, capsys, change, named):
    before = snapshot(tiny_run_copy)
    assert train(tiny_run_copy, MORE, change) == cli.EXIT_USER_ERROR
    line = one_error_line(capsys)
    assert line.startswith(f"error: {tiny_run_copy} holds another run (checkpoint step {LAST_STEP}): {named};"), line
    assert "--allow_config_change" in line
    assert snapshot(tiny_run_copy) == before


def test_1_even_allowed_an_optimizer_state_of_another_structure_is_a_mismatch_not_damage(tiny_run_copy, capsys):
    before = snapshot(tiny_run_copy)
    assert train(tiny_run_copy, MORE, "--config.optimizer.name=sgd", "--allow_config_change") == 2
    err = error_lines(capsys)
    assert err[-1].startswith(f"error: the checkpoint at step {LAST_STEP} in {tiny_run_copy / 'checkpoints'} holds an optimizer state of another structure")
    assert not os.path.exists(tiny_run_copy / "damaged_checkpoints")
    assert saved_steps(tiny_run_copy) == [STEPS_PER_EPOCH, LAST_STEP]
    # The lock was taken (it says who) before the state was compared; nothing else changed.
    assert {k: v for k, v in snapshot(tiny_run_copy).items() if k != "train.lock"} == {
        k: v for k, v in before.items() if k != "train.lock"
    }


# ---- 2. keep_checkpoints=0 deleted every checkpoint; -1 ended in a traceback.


@pytest.mark.parametrize("value", ["0", "-1"])
def test_2_keep_checkpoints_below_one_is_refused_before_anything_is_touched(tiny_run_copy, capsys, value):
    before = snapshot(tiny_run_copy)
    assert train(tiny_run_copy, MORE, f"--config.keep_checkpoints={value}") == 2
    assert one_error_line(capsys) == f"error: config.keep_checkpoints is {value}; use a whole number of at least 1"
    assert snapshot(tiny_run_copy) == before


# ---- 3. A full disk went unnoticed for an epoch, then 450 lines and five tracebacks.


@contextlib.contextmanager
def small_disk(folder, size):
    """A tmpfs of `size` at `folder` where this process may mount one (root); else None."""
    folder.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        yield False
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    try:
        yield mounted.returncode == 0
    finally:
        if mounted.returncode == 0:
            subprocess.run(["umount", "-l", str(folder)], check=False)


def test_3_a_full_disk_stops_training_at_once_with_one_line(tmp_path, capsys, monkeypatch):
    """On a real 200 KB tmpfs where the test may mount one (the first checkpoint, about
    290 KB, cannot fit); elsewhere Orbax's save raises ENOSPC as a full disk makes it."""
    with small_disk(tmp_path / "disk", "200k") as mounted:
        workdir = tmp_path / "disk" / "run"
        if not mounted:
            def full_disk_save(self, step, *args, **kwargs):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            monkeypatch.setattr(ocp.CheckpointManager, "save", full_disk_save)
        assert train(workdir) == cli.EXIT_WRITE_FAILED == 4
        line = one_error_line(capsys)
        assert line == (
            f"error: writing checkpoint step {STEPS_PER_EPOCH} in {workdir / 'checkpoints'} failed: "
            "no space left on the device; training stopped, no checkpoint is complete; free space "
            "(or fix the permissions) and run the same command to resume"
        )
        # Epoch 1 was logged before its save; epoch 2 was not trained on.
        assert [r["epoch"] for r in rundir.read_metrics(str(workdir))] == [1]
        assert saved_steps(workdir) == []


def test_3_a_write_that_fails_after_the_next_epoch_trained_still_logs_no_later_epoch(tmp_path, capsys, monkeypatch):
    """The race a loaded machine lost: the steps' checks of the background write all came
    before it failed. The epoch's end waits for it, so no line runs ahead of the failure."""
    check = ckpt.raise_if_save_failed
    monkeypatch.setattr(ckpt, "raise_if_save_failed", lambda manager, wait=False: check(manager, wait=True) if wait else None)
    with small_disk(tmp_path / "disk", "200k") as mounted:
        if not mounted:
            pytest.skip("needs a tmpfs (root and mount) for a write that fails in the background")
        workdir = tmp_path / "disk" / "run"
        assert train(workdir) == cli.EXIT_WRITE_FAILED
        assert "no space left on the device" in one_error_line(capsys)
        assert [r["epoch"] for r in rundir.read_metrics(str(workdir))] == [1]
        assert saved_steps(workdir) == []


def test_3_a_written_step_whose_pruning_fails_is_named_complete(tmp_path, capsys, monkeypatch):
    # Orbax prunes after the step's folder is renamed into place; rmtree refuses the link
    # planted here (linked steps are refused at start, so this one appears mid-run).
    workdir, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    save = ckpt.save_checkpoint

    def link_the_first_step_then_save(manager, state, meta):
        if os.path.isdir(workdir / "checkpoints" / str(STEPS_PER_EPOCH)):
            shutil.move(workdir / "checkpoints" / str(STEPS_PER_EPOCH), elsewhere)
            (workdir / "checkpoints" / str(STEPS_PER_EPOCH)).symlink_to(elsewhere)
        save(manager, state, meta)

    monkeypatch.setattr(ckpt, "save_checkpoint", link_the_first_step_then_save)
    assert train(workdir, "--config.keep_checkpoints=1") == cli.EXIT_WRITE_FAILED
    assert one_error_line(capsys) == (
        f"error: checkpoint step {LAST_STEP} in {workdir / 'checkpoints'} was written, but removing the "
        "checkpoints past keep_checkpoints failed: OSError: Cannot call rmtree on a symbolic link; "
        f"training stopped, the newest complete checkpoint is step {LAST_STEP}; free space (or fix the "
        "permissions) and run the same command to resume"
    )
    assert os.path.isdir(workdir / "checkpoints" / str(LAST_STEP))


def test_3_a_refused_write_in_the_run_folder_is_one_line_too(tiny_run_copy, capsys, monkeypatch):
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.tempfile, "mkstemp", no_space)
    assert train(tiny_run_copy) == cli.EXIT_WRITE_FAILED
    assert one_error_line(capsys) == f"error: cannot write {tiny_run_copy / 'config.json'}: no space left on the device"


# ---- 4 and 6. predict.py listed one image 41 times under `again -> .`, and blocked on a FIFO.


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    (folder / "sub").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "a.png")
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(folder / "sub" / "b.png")
    os.symlink(".", folder / "again")  # a loop
    os.symlink("..", folder / "sub" / "up")  # another
    os.symlink("a.png", folder / "same.png")  # the same file by another name
    os.mkfifo(folder / "c.png")
    return folder


@contextlib.contextmanager
def fails_after(seconds):
    def hang(signum, frame):
        raise TimeoutError(f"blocked for {seconds} s")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_4_6_a_walk_visits_each_real_file_once_and_skips_a_fifo(tiny_run, image_tree, capsys):
    with fails_after(60):
        assert predict("--workdir", str(tiny_run), "--json", str(image_tree)) == 0
    captured = capsys.readouterr()
    listed = [result["path"] for result in json.loads(captured.out)]
    assert listed == [str(image_tree / "a.png"), str(image_tree / "sub" / "b.png")]
    warnings = captured.err.strip().splitlines()
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith(f"warning: 2 link(s) under {image_tree} lead back to a folder already walked")
    assert warnings[1] == (
        f"warning: left out 1 file(s) under {image_tree} that are not regular files: {image_tree / 'c.png'} (a FIFO)"
    )


def test_6_a_fifo_named_on_the_command_line_is_refused_without_reading_it(tiny_run, image_tree, capsys):
    with fails_after(60):
        assert predict("--workdir", str(tiny_run), str(image_tree / "c.png")) == 2
    assert one_error_line(capsys) == (
        f"error: {image_tree / 'c.png'} is a FIFO, not a regular file; pass image files or folders of images"
    )


# ---- 5. A symlink in the workdir was written through.


def test_5_a_lock_file_that_is_a_link_is_refused_and_its_target_kept(tiny_run_copy, tmp_path, capsys):
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    os.remove(tiny_run_copy / "train.lock")
    os.symlink(precious, tiny_run_copy / "train.lock")
    assert train(tiny_run_copy) == 2
    assert one_error_line(capsys) == (
        f"error: {tiny_run_copy / 'train.lock'} is a symbolic link (to {precious}); fmjax does not write "
        "through links in a run directory: remove the link"
    )
    assert precious.read_text() == "keep me"


def test_5_config_and_eval_files_replace_links_without_following_them(tiny_run_copy, tmp_path):
    outside = {}
    for name in ("config.json", f"eval_{LAST_STEP}.json"):
        outside[name] = tmp_path / f"outside_{name}"
        outside[name].write_text("keep me")
        if (tiny_run_copy / name).exists():
            os.remove(tiny_run_copy / name)
        os.symlink(outside[name], tiny_run_copy / name)
    assert train(tiny_run_copy) == 0  # the finished run evaluates and rewrites config.json
    assert evaluate(tiny_run_copy) == 0
    for name in outside:
        assert outside[name].read_text() == "keep me"
        assert not os.path.islink(tiny_run_copy / name) and os.path.isfile(tiny_run_copy / name)
    assert json.loads((tiny_run_copy / "config.json").read_text())["image_size"] == 8
    assert json.loads((tiny_run_copy / f"eval_{LAST_STEP}.json").read_text())["step"] == LAST_STEP


def test_5_a_metrics_file_that_is_a_link_is_refused_and_its_target_kept(tiny_run_copy, tmp_path, capsys):
    outside = tmp_path / "outside_metrics.jsonl"
    shutil.move(tiny_run_copy / "metrics.jsonl", outside)
    os.symlink(outside, tiny_run_copy / "metrics.jsonl")
    before = outside.read_bytes()
    assert train(tiny_run_copy, MORE) == 2
    assert one_error_line(capsys) == (
        f"error: {tiny_run_copy / 'metrics.jsonl'} is a symbolic link (to {outside}); fmjax does not write "
        "through links in a run directory: remove the link"
    )
    assert outside.read_bytes() == before


def test_5_atomic_writes_leave_no_temporary_file_and_never_a_half(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text("old")
    real_write = os.write

    def write_half_then_fail(descriptor, data):
        real_write(descriptor, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "write", write_half_then_fail)
    with pytest.raises(files.WriteError, match="no space left on the device"):
        rundir.write_text(str(tmp_path), "config.json", "new and longer")
    assert (tmp_path / "config.json").read_text() == "old"
    assert os.listdir(tmp_path) == ["config.json"]


# ---- 7. A half-written last line of metrics.jsonl blocked every resume.


def test_7_a_cut_short_last_metrics_line_is_dropped_with_a_warning(tiny_run_copy, capsys):
    with open(tiny_run_copy / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "step": 6')  # a crash inside the write of epoch 3's line
    assert train(tiny_run_copy, MORE) == 0
    out = capsys.readouterr().out
    assert f"warning: the last line of {tiny_run_copy / 'metrics.jsonl'} is cut short" in out
    assert [r["epoch"] for r in rundir.read_metrics(str(tiny_run_copy))] == [1, 2, 3]


def test_7_damage_before_the_last_line_is_an_error_naming_the_line(tiny_run_copy, capsys):
    text = (tiny_run_copy / "metrics.jsonl").read_text()
    (tiny_run_copy / "metrics.jsonl").write_text("garbage\n" + text)
    assert train(tiny_run_copy, MORE) == 2
    assert one_error_line(capsys) == (
        f"error: line 1 of {tiny_run_copy / 'metrics.jsonl'} is not an epoch's JSON record; fix or delete that line"
    )


# ---- 8. A resume changed the run silently; evaluate.py accepted another data set.


@pytest.fixture(scope="module")
def other_digits(tmp_path_factory):
    """An image folder of ten classes named digit_0 ... digit_9, one image each per split."""
    root = tmp_path_factory.mktemp("other_digits")
    for split in ("train", "test"):
        for digit in range(10):
            folder = root / split / f"digit_{digit}"
            folder.mkdir(parents=True)
            Image.fromarray(np.full((8, 8), 25 * digit, np.uint8)).save(folder / "x.png")
    return root


def test_8_a_resume_on_another_data_set_batch_size_or_activation_is_refused(tiny_run_copy, other_digits, capsys):
    before = snapshot(tiny_run_copy)
    other = ["--config.data.source=image_folder", f"--config.data.root={other_digits}", "--config.batch_size=8"]
    assert train(tiny_run_copy, MORE, *other, "--config.model.activation=tanh") == 2
    line = one_error_line(capsys)
    for named in (
        "config.batch_size 64 -> 8",
        "config.data.source 'digits' -> 'image_folder'",
        f"config.data.root '' -> '{other_digits}'",
        "config.model.activation 'relu' -> 'tanh'",
        "the class names ['0', '1', '2', '3'",
        "the number of training images 1347 -> 10",
    ):
        assert named in line, (named, line)
    assert snapshot(tiny_run_copy) == before


def test_8_the_class_names_alone_are_compared():
    current = run_identity.run_record(base_config(), [f"digit_{d}" for d in range(10)], 1347)
    saved = dict(current, **{"data:class_names": [str(d) for d in range(10)]})
    assert run_identity.differences(saved, current) == [
        ("data:class_names", [str(d) for d in range(10)], [f"digit_{d}" for d in range(10)])
    ]


def test_8_evaluate_refuses_a_data_set_of_other_classes(tiny_run, other_digits, capsys):
    before = snapshot(tiny_run)
    other = ["--config.data.source=image_folder", f"--config.data.root={other_digits}", "--config.batch_size=8"]
    assert evaluate(tiny_run, *other) == 2
    assert one_error_line(capsys) == (
        f"error: the checkpoint at step {LAST_STEP} in {tiny_run} was trained on other classes than "
        "config.data names (class 0: '0' in the checkpoint, 'digit_0' in the data); evaluate with the "
        "run's data (its config.json)"
    )
    assert snapshot(tiny_run) == before


def test_8_allowed_on_purpose_a_new_rate_resumes_and_is_recorded(tiny_run_copy, capsys):
    assert train(tiny_run_copy, MORE, "--config.learning_rate=1e-4", "--allow_config_change") == 0
    out = capsys.readouterr().out
    assert (
        f"warning: continuing the run in {tiny_run_copy} from step {LAST_STEP} with a changed config "
        "(--allow_config_change): config.learning_rate 0.001 -> 0.0001" in out
    )
    with open(tiny_run_copy / "config_changes.jsonl") as f:
        assert [json.loads(line) for line in f] == [
            {"step": LAST_STEP, "changed": {"learning_rate": [0.001, 0.0001]}}
        ]
    assert [r["epoch"] for r in rundir.read_metrics(str(tiny_run_copy))] == [1, 2, 3]
    # The new rate is now the run's: resuming with it needs no flag.
    assert train(tiny_run_copy, MORE, "--config.learning_rate=1e-4") == 0


def test_8_harmless_keys_may_change_and_unknown_ones_are_not_compared():
    current = run_identity.run_record(base_config(), ["a"], 1)
    saved = dict(current)
    saved.update({"num_epochs": 99, "keep_checkpoints": 7, "parallel": "jit", "checkpoint_every_steps": 5})
    del saved["seed"]  # a key the checkpoint's fmjax did not have
    assert run_identity.differences(saved, current) == []
    cosine = dict(current, **{"schedule.name": "warmup_cosine"})
    assert run_identity.differences(dict(cosine, num_epochs=99), cosine) == [("num_epochs", 99, 10)]


# ---- 9. learning_rate=-1 trained by gradient ascent; num_epochs of 0 reported an untrained model.


@pytest.mark.parametrize(
    "override, message",
    [
        ("learning_rate=-1", "config.learning_rate is -1.0; use a finite number above 0 (a rate of 0 or below does not descend)"),
        ("num_epochs=0", "config.num_epochs is 0; use a whole number of at least 1"),
        ("num_epochs=-3", "config.num_epochs is -3; use a whole number of at least 1"),
    ],
)
def test_9_values_that_cannot_train_are_refused_before_anything_is_written(tmp_path, capsys, override, message):
    assert train(tmp_path / "new", f"--config.{override}") == 2
    assert one_error_line(capsys) == f"error: {message}"
    assert not os.path.exists(tmp_path / "new")


# ---- 10. Tracebacks for image_size 4 or 0, a workdir that is a file, a config with a syntax error.


@pytest.mark.parametrize(
    "size, rule",
    [
        ("4", "the seed CNN's 5x5 kernel needs images of at least 5 pixels; raise image_size or lower model.kernel_size"),
        ("0", "use a whole number of at least 1"),
    ],
)
def test_10_an_image_smaller_than_the_kernel_is_one_line(tmp_path, capsys, size, rule):
    assert train(tmp_path / "new", f"--config.image_size={size}") == 2
    assert one_error_line(capsys) == f"error: config.image_size is {size}; {rule}"


def test_10_a_workdir_that_is_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("mine")
    assert train(tmp_path / "file") == 2
    assert one_error_line(capsys) == f"error: --workdir {tmp_path / 'file'} is a file, not a folder; pass a folder (new or a run's)"
    assert (tmp_path / "file").read_text() == "mine"


@pytest.mark.parametrize("inside", ["checkpoints", "checkpoints/STEP", "checkpoints/STEP/nested"])
@pytest.mark.parametrize("linked", [False, True], ids=["in_place", "linked_to_another_disk"])
def test_10_a_workdir_in_a_runs_checkpoint_folder_is_one_line(tiny_run_copy, tmp_path, capsys, inside, linked):
    # Pruning step STEP would delete a run nested in it.
    checkpoints = tiny_run_copy / "checkpoints"
    if linked:
        shutil.move(checkpoints, tmp_path / "other_disk")
        checkpoints.symlink_to(tmp_path / "other_disk", target_is_directory=True)
    step = sorted(os.listdir(checkpoints), key=int)[0]
    workdir = tiny_run_copy / inside.replace("STEP", step)
    before = sorted(str(path.relative_to(tiny_run_copy)) for path in checkpoints.rglob("*"))
    assert train(workdir) == 2
    assert one_error_line(capsys) == (
        f"error: --workdir {workdir} is in {checkpoints}, the checkpoint folder of the run in {tiny_run_copy}; "
        "pass a folder outside it"
    )
    assert sorted(str(path.relative_to(tiny_run_copy)) for path in checkpoints.rglob("*")) == before


def test_10_a_step_that_is_a_link_is_refused_before_training(tiny_run_copy, tmp_path, capsys):
    # Pruning it would fail after a whole epoch (rmtree refuses links), at every resume.
    checkpoints = tiny_run_copy / "checkpoints"
    step = sorted(os.listdir(checkpoints), key=int)[0]
    elsewhere = tmp_path / "elsewhere"
    (checkpoints / "latest").symlink_to(step)  # a user's own name: Orbax and fmjax leave it be
    shutil.move(checkpoints / step, elsewhere)
    (checkpoints / step).symlink_to(elsewhere)
    assert train(tiny_run_copy) == 2
    assert one_error_line(capsys) == (
        f"error: {checkpoints / step} is a symbolic link (to {elsewhere}), which Orbax cannot delete when "
        "pruning; move the step back in place of the link, or remove the link"
    )
    assert os.readlink(checkpoints / step) == str(elsewhere) and (elsewhere / "_CHECKPOINT_METADATA").is_file()
    (checkpoints / step).unlink()
    shutil.move(elsewhere, checkpoints / step)
    assert train(tiny_run_copy) == 0
    assert os.readlink(checkpoints / "latest") == step


def config_file(tmp_path, text):
    path = tmp_path / f"config_{uuid.uuid4().hex[:6]}.py"
    path.write_text(text)
    return str(path)


def test_10_a_config_file_with_a_syntax_error_is_one_line(tmp_path, capsys):
    path = config_file(tmp_path, "def get_config(:\n    pass\n")
    argv = ["train.py", "--config", path, "--workdir", str(tmp_path / "new")]
    assert cli.run(cli.train_main, argv) == 2
    assert one_error_line(capsys) == f"error: config file {path} has a syntax error at line 1: invalid syntax; fix it"


# ---- 11. Misleading lines.


def test_11_a_config_file_without_get_config_says_so(tmp_path, capsys):
    path = config_file(tmp_path, "from fmjax.config import base_config\n")
    assert cli.run(cli.train_main, ["train.py", "--config", path, "--workdir", str(tmp_path / "w")]) == 2
    assert one_error_line(capsys) == (
        f"error: config file {path} has no get_config(); define one that returns the config (see configs/default.py)"
    )


def test_11_a_folder_passed_as_config_is_named_a_folder(tmp_path, capsys):
    argv = ["train.py", "--config", str(tmp_path), "--workdir", str(tmp_path / "w")]
    assert cli.run(cli.train_main, argv) == 2
    assert one_error_line(capsys) == f"error: --config {tmp_path} is a folder; pass a config file in it, e.g. configs/default.py"


def test_11_an_empty_data_root_names_config_data_root(tmp_path, capsys):
    assert train(tmp_path / "w", "--config.data.source=image_folder", "--config.data.root=") == 2
    assert one_error_line(capsys) == "error: config.data.root is ''; set it to the folder holding train/ and test/"


def test_11_a_step_missing_any_one_file_reads_whole_or_is_named_damaged(tiny_run_copy, capsys):
    """Each file of the newest step deleted in turn, whatever Orbax names them: a deleted
    metadata file was once reported as "NoneType"; now a step reads whole or is named damaged."""
    damaged = []
    for path in checkpoint_files(tiny_run_copy, LAST_STEP):
        kept = path.read_bytes()
        path.unlink()
        try:  # what evaluation reads: the meta record and the model's variables
            checkpoint_reads.read_meta(str(tiny_run_copy), LAST_STEP)
            checkpoint_reads.restore_variables_at(str(tiny_run_copy), LAST_STEP)
        except UserError as error:
            assert str(error).startswith(f"the checkpoint at step {LAST_STEP} in {tiny_run_copy / 'checkpoints'} is damaged ("), error
            assert "NoneType" not in str(error)
            damaged.append(path)
        path.write_bytes(kept)
    assert damaged, "no single deleted file damaged the step"

    damaged[0].unlink()
    assert evaluate(tiny_run_copy) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"error: the checkpoint at step {LAST_STEP} in {tiny_run_copy / 'checkpoints'} is damaged ("), line
    assert line.endswith(f"; pass --step with one of {STEPS_PER_EPOCH}") and "NoneType" not in line, line


# ---- 12. The right line, then noise: Orbax's thread tracebacks, coroutine dumps.


@pytest.mark.parametrize("override", ["model.name=foo", "optimizer.name=foo"])
def test_12_an_unknown_name_is_one_line_and_nothing_after(tmp_path, capsys, override):
    assert train(tmp_path / "w", f"--config.{override}") == 2
    key = override.split("=")[0]
    assert one_error_line(capsys).startswith(f"error: config.{key} is 'foo'; use one of ")
    assert not os.path.exists(tmp_path / "w")


def test_12_resuming_past_a_truncated_checkpoint_prints_no_dump(tiny_run_copy):
    """In a child process: the dump came from coroutines collected at exit, which pytest would catch."""
    workdir = tiny_run_copy
    for step in (STEPS_PER_EPOCH, LAST_STEP):
        damage_checkpoint(workdir, step, arrays_only=True)  # the metadata reads, the arrays do not
    child = subprocess.run(
        train_py(*TINY, "--workdir", str(workdir)),
        capture_output=True, text=True, timeout=240, env=dict(os.environ, XLA_FLAGS=""),
    )
    assert child.returncode == 2, child.stderr[-3000:]
    ours = [
        line for line in child.stderr.splitlines()
        if line.strip() and "it/s]" not in line and "s/it]" not in line
        # TensorFlow's C++ start-up lines are left to the data pipeline.
        and not line.startswith(("WARNING: All log messages before absl", "I0000", "W0000"))
    ]
    assert ours == [
        f"error: every checkpoint in {workdir / 'checkpoints'} is unreadable (steps {LAST_STEP}, {STEPS_PER_EPOCH}, now in "
        f"{workdir / 'damaged_checkpoints'}); run again to start afresh, or restore the files"
    ], child.stderr[-3000:]
    assert "Exception ignored" not in child.stderr


# ---- 13. A diverging run whose Adam updates stay finite trained on to its end.


def test_13_a_loss_grown_by_orders_of_magnitude_stops_the_run(tmp_path, capsys):
    workdir = tmp_path / "w"
    assert train(workdir, "--config.learning_rate=1e6") == cli.EXIT_DIVERGED == 3
    line = one_error_line(capsys)
    assert line.startswith("error: the training loss grew to "), line
    assert line.endswith(
        "the run diverged; no checkpoint was saved; lower config.learning_rate (or set config.halt_on_loss_growth=0)"
    )
    assert saved_steps(workdir) == []
    assert not os.path.exists(workdir / "metrics.jsonl")


def test_13_the_limit_is_orders_of_magnitude_above_the_first_loss():
    from fmjax.run.divergence import first_grown_step, loss_limit

    assert loss_limit(2.3, 1e4) == pytest.approx(2.3e4)
    assert loss_limit(0.1, 1e4) == 1e4  # at least 1
    assert loss_limit(2.3, 0) == float("inf")
    assert first_grown_step([2.3, 40.0, 2.3e5, 6e21], 5, 2.3e4) == (7, 2.3e5)
    assert first_grown_step([2.3, float("nan")], 1, 2.3e4) is None  # the NaN guard's


# ---- The checks behind them.


def test_every_config_value_is_checked():
    config_checks.check_config(base_config())
    for key, value, message in [
        ("batch_size", 0, "at least 1"),
        ("seed", 1.5, "whole number"),  # a config file may build values of any type
        ("checkpoint_async", "yes", "True or False"),
        ("halt_on_loss_growth", 0.5, "0 \\(off\\) or a factor above 1"),
        ("label_smoothing", 1.0, "below 1"),
        ("grad_clip_norm", -1.0, "at least 0"),
        ("optimizer.b2", 1.0, "below 1"),
        ("optimizer.eps", 0.0, "above 0"),
        ("data.std", (1.0, 0.0, 1.0), "each above 0"),
        ("data.mean", (0.5, 0.5), "3 numbers"),
        ("data.random_crop_padding", -2, "at least 0"),
        ("model.mlp_hidden", (0,), "each at least 1"),
        ("model.resnet_stage_sizes", (), "non-empty list"),
        ("schedule.decay_factor", float("nan"), "finite number"),
        ("parallel", "both", "use one of pmap, jit"),
    ]:
        values = base_config().to_dict()
        group, _, name = key.rpartition(".")
        (values[group] if group else values)[name] = value
        with pytest.raises(UserError, match=f"^config.{key} is .*{message}"):
            config_checks.check_config(ml_collections.ConfigDict(values))


def test_a_damaged_step_set_aside_twice_keeps_both_copies(tiny_run_copy):
    manager = ckpt.checkpoint_manager(str(tiny_run_copy))
    try:
        (tiny_run_copy / "damaged_checkpoints" / str(STEPS_PER_EPOCH)).mkdir(parents=True)
        checkpoint_damage._set_aside(manager, [STEPS_PER_EPOCH])
    finally:
        manager.close()
    assert sorted(os.listdir(tiny_run_copy / "damaged_checkpoints")) == [str(STEPS_PER_EPOCH), f"{STEPS_PER_EPOCH}.1"]


def test_a_damaged_step_meeting_a_file_where_damaged_steps_go_is_one_line(tiny_run_copy, capsys):
    (tiny_run_copy / "damaged_checkpoints").write_text("mine")
    damage_checkpoint(tiny_run_copy, LAST_STEP, arrays_only=True)
    assert train(tiny_run_copy) == 2
    out, err = capsys.readouterr()
    assert "setting it aside" not in out + err  # no warning of a move that cannot happen
    assert [line for line in err.splitlines() if line.strip()] == [
        f"error: {tiny_run_copy / 'damaged_checkpoints'} is a file, not a folder, so the unreadable checkpoint "
        f"step {LAST_STEP} in {tiny_run_copy / 'checkpoints'} cannot be set aside there; move "
        f"{tiny_run_copy / 'damaged_checkpoints'} away and run the same command"
    ]
    assert (tiny_run_copy / "damaged_checkpoints").read_text() == "mine"
    assert sorted(map(int, os.listdir(tiny_run_copy / "checkpoints"))) == [STEPS_PER_EPOCH, LAST_STEP]


def test_a_damaged_step_is_set_aside_through_a_link_to_a_folder(tiny_run_copy, tmp_path):
    # Checkpoints linked to a larger disk: damaged steps may follow them there.
    (tiny_run_copy / "damaged_checkpoints").symlink_to(tmp_path / "large_disk", target_is_directory=True)
    (tmp_path / "large_disk").mkdir()
    damage_checkpoint(tiny_run_copy, LAST_STEP, arrays_only=True)
    assert train(tiny_run_copy) == 0
    assert os.listdir(tmp_path / "large_disk") == [str(LAST_STEP)]

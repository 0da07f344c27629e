"""The installed commands exist and each --help lists every flag on one line."""

import importlib
import tomllib

import pytest
from conftest import ROOT

from fmjax import cli


def console_scripts():
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["scripts"]


def test_the_five_commands_point_at_functions():
    scripts = console_scripts()
    assert sorted(scripts) == ["fmjax-evaluate", "fmjax-export", "fmjax-plot", "fmjax-predict", "fmjax-train"]
    for target in scripts.values():
        module, name = target.split(":")
        assert callable(getattr(importlib.import_module(module), name))


DISTRIBUTED = ["distributed", "coordinator_address", "num_processes", "process_id"]


@pytest.mark.parametrize(
    "command, flags",
    [
        ("fmjax-train", ["config", "workdir", "verbose", "dry_run", "tpu", "tpu_candidates", "allow_config_change", *DISTRIBUTED]),
        ("fmjax-evaluate", ["config", "workdir", "verbose", "step", *DISTRIBUTED]),
        ("fmjax-predict", ["workdir", "verbose", "step", "top_k", "member", "batch_size", "json"]),
        ("fmjax-export", ["workdir", "verbose", "out", "step"]),
        ("fmjax-plot", ["verbose", "out", "dpi"]),
    ],
)
def test_every_command_prints_help_the_same_way_one_line_per_flag(command, flags, capsys):
    assert cli.run(cli.COMMANDS[command], ["cmd", "--help"]) == cli.EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    assert lines[1:3] == ["", "flags:"]
    flag_lines = [line for line in lines if line.startswith("  --")]
    assert sorted(line.split(":")[0].strip()[2:] for line in flag_lines) == sorted(flags)
    assert all(len(line.split(": ", 1)[1]) > 10 for line in flag_lines)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["predict.py", "--workdir", "x", "--top_k", "many", "a.png"], "flag --top_k=many: invalid literal for int()"),
        (["predict.py", "--workdir", "x"], "error: no IMAGE given; pass image files"),
        (["plot_metrics.py"], "error: no RUN_DIR given; pass run directories"),
        (["export.py", "--workdir", "x"], "error: no --out given;"),
        (["evaluate.py"], "error: no --workdir given;"),
        (["train.py", "--config", "configs/default.py", "extra"], "error: unexpected argument 'extra';"),
    ],
)
def test_a_bad_command_line_is_one_line_and_status_2(argv, message, capsys):
    command = {"predict.py": "fmjax-predict", "plot_metrics.py": "fmjax-plot", "export.py": "fmjax-export",
               "evaluate.py": "fmjax-evaluate", "train.py": "fmjax-train"}[argv[0]]
    assert cli.run(cli.COMMANDS[command], [str(ROOT / argv[0]), *argv[1:]]) == cli.EXIT_USER_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_shipped_configs_are_found_by_name_from_any_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no configs/ here
    assert cli.shipped_config_names() == sorted(
        path.stem for path in (ROOT / "configs").glob("*.py") if not path.name.startswith("_")
    )
    for config in (["--config", "default"], ["--config=seed.py"]):
        assert cli.run(cli.train_main, ["train.py", *config, "--dry_run"]) == 0
        assert "parameters per layer:" in capsys.readouterr().out
    assert cli.run(cli.train_main, ["train.py", "--config", "nosuch", "--dry_run"]) == cli.EXIT_USER_ERROR
    assert capsys.readouterr().err.strip() == (
        "error: config file nosuch does not exist; pass a config file, or a shipped config by name: "
        "cifar10, cifar10_resnet, default, mnist, seed"
    )
    # A file the user names is theirs, even when a shipped config has its name.
    (tmp_path / "default.py").write_text(
        "from fmjax.config import base_config\n\ndef get_config():\n    c = base_config()\n    c.model.hidden = 7\n    return c\n"
    )
    assert cli.run(cli.train_main, ["train.py", "--config", "default.py", "--dry_run"]) == 0
    # fc1 of 7 units: 12 * 12 * 32 inputs * 7 + 7 biases.
    assert "32,263" in capsys.readouterr().out

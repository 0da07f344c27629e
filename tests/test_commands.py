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


@pytest.mark.parametrize(
    "main, flags",
    [
        (cli.train_main, ["config", "workdir", "verbose", "dry_run", "allow_config_change", "distributed", "coordinator_address", "num_processes", "process_id"]),
        (cli.evaluate_main, ["config", "workdir", "verbose", "step", "distributed", "coordinator_address", "num_processes", "process_id"]),
    ],
)
def test_absl_commands_help_is_one_line_per_flag(main, flags, capsys):
    assert cli.run(main, ["cmd", "--help"]) == cli.EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    flag_lines = [line for line in lines if line.startswith("  --")]
    assert sorted(line.split(":")[0].strip()[2:] for line in flag_lines) == sorted(flags)
    assert all(len(line.split(": ", 1)[1]) > 10 for line in flag_lines)


@pytest.mark.parametrize(
    "main, flags",
    [
        (cli.predict_main, ["--workdir", "--step", "--top_k", "--batch_size", "--json", "--verbose"]),
        (cli.export_main, ["--workdir", "--out", "--step", "--verbose"]),
        (cli.plot_metrics_main, ["--out", "--dpi", "--verbose"]),
    ],
)
def test_argparse_commands_help_is_one_line_per_flag(main, flags, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.run(main, ["cmd", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out.splitlines()
    options = out[out.index("options:") + 1 :]
    assert [line.split()[0] for line in options] == ["-h,", *flags]
    assert all(len(line.split("  ")[-1].strip()) > 5 for line in options)


def test_a_bad_flag_is_one_line_and_status_2(capsys):
    assert cli.run(cli.predict_main, ["predict.py", "--workdir", "x", "--top_k", "many", "a.png"]) == cli.EXIT_USER_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--top_k: invalid int value: 'many'" in err[0]


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

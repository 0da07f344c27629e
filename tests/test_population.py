"""Populations: every member equals its own ordinary run, in both parallel modes and across a resume."""

import json

import jax
import numpy as np
import pytest
from conftest import evaluate, predict, sigterm_from
from test_on_device import tiny_config

from fmjax.core.population import Member, member_config, population_members
from fmjax.errors import UserError
from fmjax.run import trainer
from fmjax.run.checkpoint_reads import restore_params
from fmjax.run.rundir import read_metrics

RATES = (1e-3, 3e-3)


def tiny_population(**overrides):
    """Two seeds times two rates: 4 members, on 8x8 digits with augmentation, one epoch of 21 steps."""
    return tiny_config(**{"num_epochs": 1, "num_seeds": 2, "sweep": {"learning_rates": RATES}, **overrides})


@pytest.fixture(scope="module")
def population(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("population")
    record = trainer.train_and_evaluate(tiny_population(), str(workdir))
    return workdir, record


def assert_params_equal(member_params, params, atol=1e-5):
    for a, b in zip(jax.tree.leaves(member_params), jax.tree.leaves(params), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=atol)


def test_the_members_are_every_seed_at_every_rate():
    assert population_members(tiny_population(seed=5)) == [
        Member(5, 1e-3), Member(6, 1e-3), Member(5, 3e-3), Member(6, 3e-3)
    ]


def test_a_member_equals_its_own_run(population, tmp_path):
    # Member 1 differs from member 0 by its seed; the pmap test's member differs by its rate.
    workdir, record = population
    index = 1
    member = population_members(tiny_population())[index]
    alone = trainer.train_and_evaluate(member_config(tiny_population(), member), str(tmp_path))
    assert_params_equal(restore_params(str(workdir), member=index), restore_params(str(tmp_path)))
    row = record["members"][index]
    assert (row["seed"], row["learning_rate"]) == (member.seed, member.learning_rate)
    assert row["test_accuracy"] == pytest.approx(alone["test_accuracy"], abs=1 / 450)


def test_a_member_equals_its_own_run_under_pmap(tmp_path):
    config = tiny_population(parallel="pmap", num_seeds=1, sweep=dict(learning_rates=(3e-3, 1e-3)))
    trainer.train_and_evaluate(config, str(tmp_path / "population"))
    alone = member_config(config, population_members(config)[1])
    trainer.train_and_evaluate(alone, str(tmp_path / "alone"))
    assert_params_equal(restore_params(str(tmp_path / "population"), member=1), restore_params(str(tmp_path / "alone")))


def test_a_population_stopped_mid_epoch_resumes_bit_identical(population, tmp_path, monkeypatch):
    workdir, _ = population

    config = tiny_population(host_check_seconds=1e9, checkpoint_every_steps=11)
    with monkeypatch.context() as patched:
        patched.setattr(trainer, "watch_for_sigterm", sigterm_from(11))
        with pytest.raises(trainer.Preempted):
            trainer.train_and_evaluate(config, str(tmp_path))
    trainer.train_and_evaluate(tiny_population(host_check_seconds=1e9), str(tmp_path))
    for a, b in zip(jax.tree.leaves(restore_params(str(workdir))), jax.tree.leaves(restore_params(str(tmp_path)))):
        np.testing.assert_array_equal(a, b)
    assert read_metrics(str(tmp_path)) == [
        {**line, "images_per_second": read_metrics(str(tmp_path))[0]["images_per_second"]}
        for line in read_metrics(str(workdir))
    ]


def test_the_record_has_each_member_the_spread_over_seeds_and_the_best(population):
    workdir, record = population
    line = read_metrics(str(workdir))[-1]
    assert line == {**record, "images_per_second": line["images_per_second"]}
    accuracies = np.asarray([row["test_accuracy"] for row in line["members"]])
    assert line["best_member"] == int(np.argmax(accuracies))
    assert line["test_accuracy"] == pytest.approx(accuracies.mean())
    for rate, group in zip(RATES, (accuracies[:2], accuracies[2:])):
        summary = next(entry for entry in line["by_learning_rate"] if entry["learning_rate"] == rate)
        assert summary["seeds"] == 2
        assert summary["test_accuracy_mean"] == pytest.approx(group.mean())
        assert summary["test_accuracy_std"] == pytest.approx(group.std(ddof=1))


def test_evaluate_reports_every_member_and_predict_uses_one(population, tmp_path, capsys):
    workdir, record = population
    run = tmp_path / "run"
    import shutil

    shutil.copytree(workdir, run)
    assert evaluate("--workdir", str(run)) == 0
    out = capsys.readouterr().out
    for index, row in enumerate(record["members"]):
        assert f"member {index} (seed {row['seed']}, learning rate {row['learning_rate']:g}): test accuracy {row['test_accuracy']:.2%}" in out
    assert f"best: member {record['best_member']}" in out
    saved = json.loads((run / "eval_21.json").read_text())
    assert saved["accuracy"] == pytest.approx(record["members"][record["best_member"]]["test_accuracy"])
    image = tmp_path / "digit.png"
    from PIL import Image
    from sklearn.datasets import load_digits

    Image.fromarray((load_digits().images[0] * 16).astype(np.uint8)).save(image)
    assert predict("--workdir", str(run), "--json", "--member", "9", str(image)) == 2
    assert "has members 0 to 3; member 9 is not one of them" in capsys.readouterr().err
    outputs = {}
    for member in ("0", "3"):
        assert predict("--workdir", str(run), "--json", "--top_k", "10", "--member", member, str(image)) == 0
        outputs[member] = json.loads(capsys.readouterr().out)[0]["predictions"]
    assert outputs["0"] != outputs["3"]  # two members, two models


def test_restore_params_of_one_member_of_an_ordinary_run_is_refused(tiny_run):
    with pytest.raises(UserError, match="is an ordinary run's, not a population's"):
        restore_params(str(tiny_run), member=0)


def test_tensorboard_has_a_curve_per_member(population):
    from test_tensorboard import read_scalars

    workdir, record = population
    scalars = read_scalars(str(workdir))
    for row in record["members"]:
        tag = f"test/accuracy/seed_{row['seed']}_lr_{row['learning_rate']:g}"
        assert scalars[tag] == [(21, pytest.approx(row["test_accuracy"], abs=1e-6))]
        rate = f"learning_rate/seed_{row['seed']}_lr_{row['learning_rate']:g}"
        assert scalars[rate] == [(21, pytest.approx(row["learning_rate"], rel=1e-6))]
    assert scalars["test/accuracy"] == [(21, pytest.approx(record["test_accuracy"], abs=1e-6))]


def test_a_finished_population_run_again_reports_its_members(population, tmp_path, capsys):
    import shutil

    workdir, record = population
    run = tmp_path / "run"
    shutil.copytree(workdir, run)
    again = trainer.train_and_evaluate(tiny_population(), str(run))
    assert [row["test_accuracy"] for row in again["members"]] == [row["test_accuracy"] for row in record["members"]]
    assert again["best_member"] == record["best_member"]


def test_streamed_data_says_which_members_equal_their_runs(tmp_path, capsys):
    trainer.train_and_evaluate(tiny_population(num_seeds=1, data={"cache": "none"}), str(tmp_path))
    assert "every member reads the batches in config.seed's order" in capsys.readouterr().out

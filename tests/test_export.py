"""A trained run exported as a SavedModel and a jax.export artifact gives predict.py's probabilities without fmjax."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fmjax import cli
from fmjax.config import base_config
from fmjax.errors import UserError
from fmjax.run import trainer
from fmjax.tools.export import export_run

SIZE = 8
BATCHES = (1, 7)
# Runs in a fresh process where importing fmjax fails: the artifacts must stand alone.
# Loads both once, then serves each batch size in BATCHES (the first images of the files).
LOAD_BOTH = """
import json, sys
sys.modules["fmjax"] = None
import jax, numpy as np, tensorflow as tf
from PIL import Image
out, batches, paths = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3:]
serve = tf.saved_model.load(out + "/saved_model").signatures["serving_default"]
exported = jax.export.deserialize(open(out + "/model.jax_export", "rb").read())
results = {}
for batch in batches:
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths[:batch]])
    served = serve(images=tf.constant(pixels))
    results[batch] = {
        "saved_model": served["probabilities"].numpy().tolist(),
        "class_names": [n.decode() for n in served["class_names"].numpy()],
        "jax_export": np.asarray(exported.call(pixels.astype(np.float32) / 255.0)).tolist(),
    }
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    config = base_config()
    config.image_size = SIZE
    config.model.hidden = 16
    config.num_epochs = 1
    config.data.normalize = True  # the artifacts must normalise as training did
    trainer.train_and_evaluate(config, str(run))
    out = tmp_path_factory.mktemp("export") / "model"
    paths = export_run(str(run), str(out))
    images = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    files = []
    for i in range(7):
        files.append(str(images / f"{i}.png"))
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), np.uint8)).save(files[-1])
    return run, out, paths, files


def predicted(run, files, capsys):
    assert cli.run(cli.predict_main, ["predict.py", "--workdir", str(run), "--json", "--top_k", "10", *files]) == 0
    results = json.loads(capsys.readouterr().out)
    names = sorted(results[0]["predictions"], key=lambda p: int(p["class"]))
    assert [p["class"] for p in names] == [str(d) for d in range(10)]
    return np.array([[p["probability"] for p in sorted(r["predictions"], key=lambda p: int(p["class"]))] for r in results])


def test_both_artifacts_give_predicts_probabilities_without_fmjax(exported, capsys):
    run, out, paths, files = exported
    assert sorted(os.path.basename(p) for p in paths) == ["class_names.json", "model.jax_export", "saved_model"]
    env = {key: value for key, value in os.environ.items() if key != "XLA_FLAGS"}
    loaded = subprocess.run(
        [sys.executable, "-c", LOAD_BOTH, str(out), json.dumps(BATCHES), *files],
        capture_output=True, text=True, env=env, timeout=300, cwd=str(out),
    )
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    results = json.loads(loaded.stdout.strip().splitlines()[-1])
    for batch in BATCHES:
        result = results[str(batch)]
        expected = predicted(run, files[:batch], capsys)
        assert result["class_names"] == [str(d) for d in range(10)]
        np.testing.assert_allclose(result["saved_model"], expected, atol=1e-5, err_msg=f"batch {batch}")
        np.testing.assert_allclose(result["jax_export"], expected, atol=1e-5, err_msg=f"batch {batch}")


def test_an_out_folder_in_use_is_refused(exported):
    run, out, _, _ = exported
    with pytest.raises(UserError, match="exists and is not an empty folder; pass a new --out"):
        export_run(str(run), str(out))

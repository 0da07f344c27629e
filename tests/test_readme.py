"""The README's research-code snippet runs as written, after a quick-start run exists."""

import re

import numpy as np
import pytest
from conftest import ROOT
from PIL import Image

from fmjax.config import base_config
from fmjax.run.trainer import train_and_evaluate
from fmjax.tools import predict
from fmjax.tools.export import export_run


def snippet(section):
    text = (ROOT / "README.md").read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", body, re.S).group(1)


@pytest.fixture(scope="module")
def quick_start(tmp_path_factory):
    """A folder holding runs/default: the default config's model and image size, one short epoch."""
    folder = tmp_path_factory.mktemp("quick_start")
    config = base_config()
    config.num_epochs = 1
    config.data.test_fraction = 0.9  # a short epoch: the snippets need a run, not a good one
    train_and_evaluate(config, str(folder / "runs" / "default"))
    return folder


def test_composing_snippet_runs_as_written(quick_start, monkeypatch, capsys):
    monkeypatch.chdir(quick_start)
    capsys.readouterr()
    namespace = {}
    exec(compile(snippet("Composing in research code"), "README.md", "exec"), namespace)
    assert capsys.readouterr().out.splitlines()[-2:] == ["(5,)", "20"]
    assert namespace["logits"].shape == (1, 10)
    assert namespace["saliency"].shape == (32, 16, 16, 3)
    assert int(namespace["state"].step) == 5


def test_deployment_snippet_runs_as_written(quick_start, tmp_path, monkeypatch, capsys):
    run = quick_start / "runs" / "default"
    export_run(str(run), str(tmp_path / "exported" / "default"))
    Image.fromarray(np.full((20, 20, 3), 200, np.uint8)).save(tmp_path / "digit.png")
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    namespace = {}
    exec(compile(snippet("Deployment"), "README.md", "exec"), namespace)
    served = namespace["served"](images=namespace["tf"].constant(namespace["pixels"]))["probabilities"].numpy()
    exported = np.asarray(namespace["exported"].call(namespace["pixels"].astype(np.float32) / 255.0))
    assert served.shape == exported.shape == (1, 10)
    np.testing.assert_allclose(served, exported, atol=1e-5)
    # Both give predict.py's probabilities for the image (a flat grey resizes alike either way).
    (result,) = predict.load_predictor(str(run)).predict([str(tmp_path / "digit.png")], top_k=10)
    by_class = {p["class"]: p["probability"] for p in result["predictions"]}
    np.testing.assert_allclose(served[0], [by_class[str(d)] for d in range(10)], atol=1e-5)

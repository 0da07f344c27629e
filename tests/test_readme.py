"""The README's research-code snippet runs as written, after a quick-start run exists."""

import os
import re

from fmjax.config import base_config
from fmjax.run.trainer import train_and_evaluate

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def snippet(section):
    with open(README) as f:
        text = f.read()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", body, re.S).group(1)


def test_composing_snippet_runs_as_written(tmp_path, monkeypatch, capsys):
    config = base_config()  # the default config's model and image size
    config.num_epochs = 1
    config.parallel = "jit"  # the faster of the two on 8 CPU devices sharing 2 cores
    config.data.test_fraction = 0.9  # a short epoch: the snippet needs a run, not a good one
    train_and_evaluate(config, str(tmp_path / "runs" / "default"))
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(snippet("Composing in research code"), "README.md", "exec"), namespace)
    assert capsys.readouterr().out.splitlines()[-2:] == ["(5,)", "20"]
    assert namespace["logits"].shape == (1, 10)
    assert namespace["saliency"].shape == (32, 16, 16, 3)
    assert int(namespace["state"].step) == 5


def test_deployment_snippet_runs_as_written(tmp_path, monkeypatch, capsys):
    import numpy as np
    from PIL import Image

    from fmjax.tools.export import export_run

    config = base_config()
    config.num_epochs = 1
    config.data.test_fraction = 0.9  # a short epoch: the snippet needs a run, not a good one
    train_and_evaluate(config, str(tmp_path / "runs" / "default"))
    export_run(str(tmp_path / "runs" / "default"), str(tmp_path / "exported" / "default"))
    Image.fromarray(np.full((20, 20, 3), 200, np.uint8)).save(tmp_path / "digit.png")
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    namespace = {}
    exec(compile(snippet("Deployment"), "README.md", "exec"), namespace)
    served = namespace["served"](images=namespace["tf"].constant(namespace["pixels"]))["probabilities"].numpy()
    exported = np.asarray(namespace["exported"].call(namespace["pixels"].astype(np.float32) / 255.0))
    assert served.shape == exported.shape == (1, 10)
    np.testing.assert_allclose(served, exported, atol=1e-5)
    np.testing.assert_allclose(served.sum(), 1.0, rtol=1e-5)

"""fmjax measured against the seed's PyTorch program, on one machine in one run.

Not installed with fmjax: scripts/benchmark.py and
scripts/benchmark_checkpoints.py run these modules, and the tests import
them with scripts/ on the import path (tests/conftest.py).

- timing: wall-clock medians of repeated calls, taken in turns.
- machine: the CPU, the cores used, the matmul rate and memory bandwidth.
- step: the train step of fmjax (both data-parallel forms) and of PyTorch.
- roofline: XLA's counts for fmjax's step and the bound they set.
- pipeline: a folder of JPEGs; fmjax's streamed pipeline against a PIL pool.
- suite: every measurement above in one run; report: it as markdown.
- checkpoints: what checkpoints cost the train step.
- torch_reference: the seed's PyTorch models, shared with the port's tests.

Fairness: machine.limit_cores pins the whole process (XLA's, PyTorch's and
TensorFlow's thread pools alike) to the same cores, and PyTorch is told to
use that many threads, so no framework gets more of the machine than another.
"""

"""The pure core: models, losses, optimizers, the train state and the steps.

No file, device or logging side effects, and importable without TensorFlow or Orbax.
"""

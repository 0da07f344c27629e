"""Exports a trained run for use without fmjax: python scripts/export.py --workdir DIR --out DIR [--step N]

Writes DIR/saved_model (TensorFlow, through jax2tf: signatures "serving_default"
for uint8 images and "serving_float" for float32 ones in [0, 1], each giving
"probabilities" and "class_names"), DIR/model.jax_export (jax.export with a
symbolic batch; float32 images in [0, 1]) and DIR/class_names.json. Images
are of the run's size. Exit statuses: 0 done, 2 bad input.
"""

from fmjax import cli

if __name__ == "__main__":
    cli.run_command(cli.export_main)

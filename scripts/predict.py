"""Classifies image files with a trained run: python scripts/predict.py --workdir DIR IMAGE [IMAGE ...]

IMAGE is a file or a folder (walked for image files: .jpg .jpeg .png .ppm
.bmp .pgm .tif .tiff .webp .gif). Prints each image's --top_k classes with their probabilities, one
line per image, or with --json a list of {"path", "predictions": [{"class",
"probability"}]}. Exit statuses: 0 done, 2 bad input.
"""

from fmjax import cli

if __name__ == "__main__":
    cli.run_command(cli.predict_main)

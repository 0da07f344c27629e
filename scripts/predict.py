"""Classifies image files with a trained run: python scripts/predict.py --workdir DIR IMAGE [IMAGE ...]

IMAGE is a file or a folder (walked for .jpg, .jpeg, .png, .gif and .bmp
files). Prints each image's --top_k classes with their probabilities, one
line per image, or with --json a list of {"path", "predictions": [{"class",
"probability"}]}. Exit statuses: 0 done, 2 bad input.
"""

import argparse
import json
import sys

from fmjax import cli  # first: it quiets TensorFlow's start-up logs
from fmjax.errors import UserError
from fmjax.predict import find_image_paths, format_predictions, load_predictor


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):
        # A bad flag is a user error: one line, status 2, as for every fmjax command.
        raise UserError(f"{message}; run with --help for the flags")


def main(argv: list[str]) -> int:
    parser = _OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="Image files or folders of them.")
    parser.add_argument("--workdir", required=True, help="The run's directory, as train.py wrote it.")
    parser.add_argument("--step", type=int, help="The checkpoint's step (default: the latest).")
    parser.add_argument("--top_k", type=int, default=3, help="Classes listed per image.")
    parser.add_argument("--batch_size", type=int, default=64, help="Images per forward pass.")
    parser.add_argument("--json", action="store_true", help="Print JSON instead of one line per image.")
    parser.add_argument("--verbose", action="store_true", help="Show tracebacks of errors.")
    args = parser.parse_args(argv[1:])

    paths = find_image_paths(args.images)
    predictor = load_predictor(args.workdir, args.step, args.batch_size)
    results = predictor.predict(paths, args.top_k)
    print(json.dumps(results, indent=2) if args.json else format_predictions(results))
    return cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(cli.run(main))

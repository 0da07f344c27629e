"""The shipped configs, installed as the package fmjax.configs: `--config NAME` finds configs/NAME.py."""

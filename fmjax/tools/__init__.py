"""Tools over a trained or planned run: evaluation, prediction, export, plots, dry runs, the PyTorch port."""

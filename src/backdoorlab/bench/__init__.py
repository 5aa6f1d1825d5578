"""``backdoorlab bench``: experiment grids (dataset x arch x attack x defense x seed) with a
resumable SQLite store, local-process and Ray executors, cached artifacts and summaries."""
from .cell import run_cell
from .grid import Grid, config_hash, load_grid
from .runner import run_local, run_ray
from .store import Store
from .summary import aggregate, csv_text, markdown, plots

__all__ = ["Grid", "Store", "aggregate", "config_hash", "csv_text", "load_grid", "markdown", "plots",
           "run_cell", "run_local", "run_ray"]

"""Experiments from YAML files: many methods x seeds x scenarios, cached Original/Retrain, tables, charts.

>>> from coun_fast.experiment import load_config, run_experiment
>>> config = load_config(recipe_path("cpu_smoke"), seeds=[0])
>>> results = run_experiment(config)        # results.json / .csv / .md and PNGs in config.output

Modules: :mod:`.config` (the file format and its validation), :mod:`.cache` (content-addressed
Original and Retrain), :mod:`.runner` (the steps, resume, sweep), :mod:`.results` (aggregation
over seeds, tables), :mod:`.plots` (charts). ``coun-fast run`` is the command line.
"""

from coun_fast.experiment.config import ConfigError, ExperimentConfig, load_config, parse_config
from coun_fast.experiment.results import mean_std, summarize
from coun_fast.experiment.runner import run_experiment
from coun_fast.recipes import available as available_recipes
from coun_fast.recipes import resolve as recipe_path

__all__ = ["ConfigError", "ExperimentConfig", "available_recipes", "load_config", "mean_std", "parse_config",
           "recipe_path", "run_experiment", "summarize"]

"""Evaluation of unlearned models: the SalUn-protocol metrics CoUn reports, cost, analyses, reports.

>>> from coun_fast import evaluate
>>> m = evaluate.unlearning_metrics(model, splits.train, splits.test, split, normalization=norm)
>>> r = evaluate.unlearning_metrics(retrained, splits.train, splits.test, split, normalization=norm)
>>> evaluate.avg_gap(m, r)                       # mean |Δ| over UA, RA, TA, MIA
>>> print(evaluate.metrics_table({"Retrain": r, "CoUn": m}))

Modules: :mod:`.predict` (one pass of a model), :mod:`.metrics` (UA, RA, TA, MIA, Avg. Gap),
:mod:`.mia` (SalUn's five SVC attacks), :mod:`.cost` (time, images, PFLOPs), :mod:`.analysis`
(prediction distributions, centroid distances), :mod:`.report` (markdown table, bar chart).
"""

from coun_fast.evaluate.analysis import centroid_distances, distribution_gap, prediction_distribution
from coun_fast.evaluate.cost import Cost, CostMeter, pflops
from coun_fast.evaluate.metrics import (GAP_KEYS, accuracy, avg_gap, metrics_from_predictions, unlearning_metrics,
                                        unlearning_predictions)
from coun_fast.evaluate.mia import ATTACKS, attack_features, mia_efficacy, mia_privacy, true_label_confidence
from coun_fast.evaluate.predict import Predictions, eval_mode, predict
from coun_fast.evaluate.report import gap_bar_chart, metrics_table

__all__ = [
    "ATTACKS",
    "Cost",
    "CostMeter",
    "GAP_KEYS",
    "Predictions",
    "accuracy",
    "attack_features",
    "avg_gap",
    "centroid_distances",
    "distribution_gap",
    "eval_mode",
    "gap_bar_chart",
    "metrics_from_predictions",
    "metrics_table",
    "mia_efficacy",
    "mia_privacy",
    "pflops",
    "prediction_distribution",
    "predict",
    "true_label_confidence",
    "unlearning_metrics",
    "unlearning_predictions",
]

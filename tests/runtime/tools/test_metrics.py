"""glimmer.runtime.tools.metrics: the classification report against scikit-learn."""

import numpy as np
import pytest

from glimmer.runtime.tools.metrics import classification_report


def test_classification_report_matches_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 200)
    p = np.where(rng.random(200) < 0.7, y, rng.integers(0, 4, 200))
    p[p == 3] = 2  # class 3 never predicted: precision undefined -> 0, as sklearn
    rep = classification_report(y, p, list("wxyz"))
    assert rep["f1_weighted"] == pytest.approx(
        metrics.f1_score(y, p, average="weighted", zero_division=0)
    )
    assert rep["accuracy"] == pytest.approx(metrics.accuracy_score(y, p))
    prec, rec, f1, sup = metrics.precision_recall_fscore_support(
        y, p, labels=range(4), zero_division=0
    )
    for i, name in enumerate("wxyz"):
        assert rep["per_class"][name]["precision"] == pytest.approx(prec[i])
        assert rep["per_class"][name]["recall"] == pytest.approx(rec[i])
        assert rep["per_class"][name]["support"] == sup[i]
    assert np.array_equal(rep["confusion_matrix"], metrics.confusion_matrix(y, p, labels=range(4)))

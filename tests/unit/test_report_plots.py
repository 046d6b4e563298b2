"""Report tables and plots: a loss / perplexity as it is and a score in points (×100); the legend
says when a point has no SEM."""
from analogformer.report.pruning import _prune_table


def _rows():
    return [{"condition": "digital", "stage": "dense", "prune_ratio": 0.0, "mean": 3.25, "sem": 0.0, "n": 1},
            {"condition": "prune-l2-ffn@0.25:pruned", "stage": "pruned", "prune_ratio": 0.25, "mean": 3.75,
             "sem": 0.0, "n": 1},
            {"condition": "prune-l2-ffn@0.25:retrained", "stage": "retrained", "prune_ratio": 0.25, "mean": 3.5,
             "sem": 0.0, "n": 1}]


def test_lm_metrics_are_not_multiplied_by_100():
    header, body = _prune_table(_rows(), 1)
    assert header == ["method", "prune ratio", "dense", "after pruning", "after retraining", "retrained − dense"]
    assert body[0][2:] == ["3.25", "3.75", "3.50", "+0.25"]


def test_scores_are_in_points_by_default():
    _, body = _prune_table(_rows())
    assert body[0][2:] == ["325.00", "375.00", "350.00", "+25.00"]


def test_legend_says_when_points_have_no_sem():
    from analogformer.report.plots import _sem_note
    assert _sem_note([1, 1]) == "(1 instance each: no SEM)"
    assert _sem_note([1, 3]) == "(± SEM; none where n = 1)"
    assert _sem_note([2, 3]) == "(± SEM)"

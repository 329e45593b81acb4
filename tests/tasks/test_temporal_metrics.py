"""AP / AUC against scikit-learn and against their definitions; MRR against a hand-checked example
and the rank definition TGB uses (ties: the mean of the optimistic and pessimistic ranks)."""
import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from relformer.tasks.temporal_metrics import link_prediction_metrics, mrr, reciprocal_ranks


def _ap_by_definition(pos, neg):
    """AP = sum over positives (no ties) of precision at that positive's rank / P."""
    s = sorted([(x, 1) for x in pos] + [(x, 0) for x in neg], reverse=True)
    hits, total = 0, 0.0
    for k, (_, y) in enumerate(s, 1):
        if y:
            hits += 1
            total += hits / k
    return total / len(pos)


def _auc_by_definition(pos, neg):
    """P(score_pos > score_neg) + 0.5 P(equal) (Mann-Whitney)."""
    return float(np.mean([[1.0 if p > n else 0.5 if p == n else 0.0 for n in neg] for p in pos]))


def test_ap_auc_against_sklearn_and_the_definitions():
    g = torch.Generator().manual_seed(0)
    pos, neg = torch.randn(60, generator=g) + 1.0, torch.randn(90, generator=g)
    m = link_prediction_metrics(pos, neg)
    y = np.r_[np.ones(60), np.zeros(90)]
    s = np.r_[pos.numpy(), neg.numpy()]
    assert m["ap"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert m["auc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert m["ap"] == pytest.approx(_ap_by_definition(pos.tolist(), neg.tolist()), abs=1e-12)
    assert m["auc"] == pytest.approx(_auc_by_definition(pos.tolist(), neg.tolist()), abs=1e-12)
    # binary scores with ties (EdgeBank's): AUC counts a tie as 1/2
    pb, nb = torch.tensor([1.0, 1, 0, 1]), torch.tensor([0.0, 1, 0, 0, 0])
    assert link_prediction_metrics(pb, nb)["auc"] == pytest.approx(_auc_by_definition(pb.tolist(), nb.tolist()), abs=1e-12)
    assert link_prediction_metrics(np.array([2.0, 3.0]), np.array([0.0]))["ap"] == 1.0


def test_mrr_hand_checked_example():
    pos = torch.tensor([0.9, 0.5, 0.2])
    neg = torch.tensor([[0.1, 0.2, 0.3],    # pos best: rank 1
                        [0.6, 0.5, 0.1],    # one above, one tied: ranks 2 (optimistic) / 3 (pessimistic) -> 2.5
                        [0.2, 0.2, 0.2]])   # all tied: ranks 1 / 4 -> 2.5
    assert reciprocal_ranks(pos, neg).tolist() == pytest.approx([1.0, 1 / 2.5, 1 / 2.5])
    assert mrr(pos, neg) == pytest.approx((1 + 0.4 + 0.4) / 3)
    K = 100
    assert mrr(torch.zeros(7), torch.zeros(7, K)) == pytest.approx(1 / (1 + K / 2))  # a constant scorer


def test_mrr_against_the_rank_definition():
    g = torch.Generator().manual_seed(1)
    pos = torch.randint(5, (200,), generator=g).double()
    neg = torch.randint(5, (200, 100), generator=g).double()  # many ties
    ref = []
    for p, row in zip(pos.tolist(), neg.tolist()):
        above, tied = sum(x > p for x in row), sum(x == p for x in row)
        ref.append(1.0 / ((above + 1) + (above + tied + 1)) * 2)  # 1 / mean(optimistic, pessimistic)
    assert mrr(pos, neg) == pytest.approx(float(np.mean(ref)), abs=1e-12)


@pytest.mark.parametrize("call, message", [
    (lambda: link_prediction_metrics(torch.tensor([float("nan")]), torch.tensor([0.0])), "pos_scores holds NaN"),
    (lambda: link_prediction_metrics(torch.tensor([1.0]), torch.tensor([])), "neg_scores is empty"),
    (lambda: link_prediction_metrics(torch.ones(2, 2), torch.ones(2)), "pos_scores must be a 1-D"),
    (lambda: link_prediction_metrics([1.0], torch.ones(2)), "pos_scores must be a tensor"),
    (lambda: mrr(torch.ones(3), torch.ones(2, 100)), "neg_scores has 2 rows for 3 positives"),
    (lambda: mrr(torch.ones(3), torch.ones(3)), "neg_scores must be a 2-D"),
    (lambda: mrr(torch.ones(2), torch.tensor([[0.0, float("inf")], [0.0, 1.0]])), "neg_scores holds NaN or inf"),
])
def test_bad_scores_raise(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()

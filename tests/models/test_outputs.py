"""HF-like outputs: :class:`ModelOutput` indexes, iterates and converts exactly as HF
``transformers.utils.ModelOutput`` on the same fields; the families' outputs use it; ``labels=``
gives HF's loss (cross-entropy for class ids, MSE for one output, BCE for float multi-label
targets), with gradients, and a clear error without a head."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from transformers.utils import ModelOutput as HFModelOutput

from relformer.models import ModelOutput, create_model


@dataclass
class Ours(ModelOutput):
    a: torch.Tensor | None = None
    b: torch.Tensor | None = None
    c: tuple | None = None


@dataclass
class Theirs(HFModelOutput):
    a: torch.Tensor | None = None
    b: torch.Tensor | None = None
    c: tuple | None = None


@pytest.mark.parametrize("fields", [dict(a=1, b=2, c=3), dict(b=2), dict(a=1, c=3), dict(b=2, c=3)])
def test_model_output_behaves_as_hf(fields):
    values = {k: torch.tensor(float(v)) for k, v in fields.items()}
    ours, theirs = Ours(**values), Theirs(**values)
    assert ours.keys() == list(theirs.keys()) and list(ours) == list(theirs) and len(ours) == len(theirs)
    assert ours.to_tuple() == theirs.to_tuple() and ours[0] is theirs[0] and ours[1:] == theirs[1:]
    for key in theirs.keys():
        assert ours[key] is theirs[key] and key in ours
    assert dict(ours.items()) == dict(theirs.items())
    missing = next(k for k in "abc" if k not in fields) if len(fields) < 3 else None
    if missing:
        with pytest.raises(KeyError, match=f"no field '{missing}' set"):
            ours[missing]
        assert missing not in ours
    with pytest.raises(TypeError, match="indices must be str, int or slice"):
        ours[1.5]


def test_family_outputs_index_by_key_and_position():
    x = torch.randn(2, 1, 28, 28)
    out = create_model("vit_micro").eval()(x)
    assert out.keys() == ["last_hidden_state", "pooler_output", "logits"]
    assert out["logits"] is out.logits is out[2] and out[0] is out.last_hidden_state
    assert out.to_tuple() == (out.last_hidden_state, out.pooler_output, out.logits)
    ids = torch.randint(0, 1000, (2, 5))
    text = create_model("text_micro").eval()(ids)
    assert text[0] is text["last_hidden_state"] and text[1] is text.pooler_output and len(text) == 2
    det = create_model("detr_micro").eval()(torch.randn(1, 1, 64, 64))
    assert det["pred_boxes"] is det[1] and det.keys()[:3] == ["logits", "pred_boxes", "aux_outputs"]


@pytest.mark.parametrize("name", ["vit_micro", "swin_micro"])
def test_labels_give_the_cross_entropy_loss(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    size = model.config.image_size
    x = torch.randn(3, model.config.in_chans, *((size, size) if isinstance(size, int) else size))
    labels = torch.tensor([1, 0, 7])
    out = model(x, labels=labels)
    plain = model(x)
    assert out.loss is not None and plain.loss is None and plain.keys()[0] == "last_hidden_state"
    torch.testing.assert_close(out.loss, F.cross_entropy(plain.logits, labels), rtol=0, atol=1e-6)
    assert out[0] is out.loss and out.keys() == ["loss", "last_hidden_state", "pooler_output", "logits"]
    out.loss.backward()
    grad = model.head.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_labels_follow_hf_problem_types():
    x = torch.randn(4, 1, 28, 28)
    regression = create_model("vit_micro", num_classes=1).eval()
    targets = torch.randn(4)
    torch.testing.assert_close(regression(x, labels=targets).loss,
                               F.mse_loss(regression(x).logits.squeeze(-1), targets), rtol=0, atol=1e-6)
    multi = create_model("vit_micro", num_classes=3).eval()
    labels = torch.tensor([[1.0, 0.0, 1.0]] * 4)
    torch.testing.assert_close(multi(x, labels=labels).loss,
                               F.binary_cross_entropy_with_logits(multi(x).logits, labels), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="integer labels must have shape \\(4,\\)"):
        multi(x, labels=torch.zeros(4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="no classification head"):
        create_model("vit_micro", num_classes=0)(x, labels=torch.zeros(4, dtype=torch.long))

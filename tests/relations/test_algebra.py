"""Relation algebra (issue 18 item 4): ``&`` combines anything, ``+`` adds bias-only relations; bound
and mapped relations survive state_dict, deepcopy, torch.compile and DDP."""
import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import relformer
from relformer import relations as R
from tests.attention.reference import reference
from tests.equivalence import make_qkv


@pytest.mark.parametrize("make", [
    lambda H: R.Causal() + R.ALiBi(H), lambda H: R.ALiBi(H) + R.Causal(),
    lambda H: R.RelativeBias(H, 4) + R.SlidingWindow(2), lambda H: R.RelativeBias(H, 4) + R.URPE(H, 2),
    lambda H: R.Causal() + R.SlidingWindow(3), lambda H: (R.Causal() & R.ALiBi(H)) + R.ALiBi(H),
])
def test_plus_refuses_any_side_with_a_mask_or_multiplier(make):
    with pytest.raises(TypeError, match=r"'\+' adds bias-only relations"):
        make(2)


def test_plus_refuses_non_relations():
    with pytest.raises(TypeError):
        R.ALiBi(2) + 1
    with pytest.raises(TypeError):
        1 + R.ALiBi(2)
    with pytest.raises(TypeError):
        R.ALiBi(2) & "causal"


def test_plus_sums_biases_and_equals_and():
    H, L = 2, 9
    rb, alibi = R.RelativeBias(H, 4), R.ALiBi(H)
    with torch.no_grad():
        rb.table.normal_()
    plus, amp = rb + alibi, rb & alibi
    want = rb.dense_bias(1, H, L, L) + alibi.dense_bias(1, H, L, L)
    torch.testing.assert_close(plus.dense_bias(1, H, L, L), want, rtol=0, atol=0)
    torch.testing.assert_close(amp.dense_bias(1, H, L, L), want, rtol=0, atol=0)
    assert not plus.has_mask and not amp.has_mask


def test_and_combines_masks_biases_and_multipliers():
    H, L = 2, 9
    rel = R.Causal() & R.ALiBi(H) & R.SlidingWindow(3) & R.URPE(H, 2)
    assert rel.has_mask and rel.has_bias and rel.has_prob and len(rel.parts) == 4
    i = torch.arange(L)
    d = i[:, None] - i[None, :]
    torch.testing.assert_close(rel.dense_mask(1, H, L, L)[0, 0], (d >= 0) & (d <= 3), rtol=0, atol=0)
    q, k, v = make_qkv(1, H, L, L, 4, requires_grad=False)
    torch.testing.assert_close(relformer.attend(q, k, v, rel, backend="eager"), reference(q, k, v, rel).float(),
                               rtol=0, atol=1e-5)


# ---- bind / map_tensors survive the module machinery ------------------------------------------------
def _bound(H=2, L=6):
    spd = torch.randint(-1, 4, (1, L, L))
    base = R.ShortestPathBias(H, 3)
    with torch.no_grad():
        base.table.normal_()
    return base, base.bind(spd=spd), spd


def test_bound_relation_shares_tables_and_state_dict_with_its_source():
    base, bound, _ = _bound()
    assert bound.table is base.table
    assert bound.state_dict().keys() == base.state_dict().keys()
    fresh = R.ShortestPathBias(2, 3)
    fresh.load_state_dict(bound.state_dict())
    torch.testing.assert_close(fresh.table, base.table, rtol=0, atol=0)
    bound.load_state_dict({"table": torch.zeros_like(base.table)})
    assert (base.table == 0).all()  # one table: loading into the bound copy loads the source
    mapped = base.detached()
    assert mapped.state_dict().keys() == base.state_dict().keys()
    assert not mapped.table.requires_grad and mapped.table.data_ptr() == base.table.data_ptr()


def test_deepcopy_of_bound_and_mapped_relations_is_independent_and_equal():
    base, bound, spd = _bound()
    q, k, v = make_qkv(1, 2, 6, 6, 4, requires_grad=False)
    for rel in (bound, bound.detached(), R.Causal() & bound):
        twin = copy.deepcopy(rel)
        torch.testing.assert_close(relformer.attend(q, k, v, twin, backend="eager"),
                                   relformer.attend(q, k, v, rel, backend="eager"), rtol=0, atol=0)
        with torch.no_grad():
            next(twin.parameters()).add_(1.0)
        assert not torch.equal(next(twin.parameters()), base.table)


@pytest.mark.slow  # dynamo's first trace in a process: ~10-60 s on a shared 2-core machine
@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_bound_relation_under_torch_compile(backend):
    """dynamo traces attend with a relation bound inside the compiled function (fullgraph=False,
    the aot_eager backend: the tracing, not Inductor's code generation, is what meets bind)."""
    base, _, spd = _bound()
    q, k, v = make_qkv(1, 2, 6, 6, 4)

    def f(q, k, v, spd):
        return relformer.attend(q, k, v, R.Causal() & base.bind(spd=spd), backend=backend)

    want = f(q, k, v, spd)
    want.sum().backward()
    grads = [t.grad.clone() for t in (q, base.table)]
    for t in (q, base.table):
        t.grad = None
    got = torch.compile(f, backend="aot_eager", fullgraph=False)(q, k, v, spd)
    got.sum().backward()
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    for g, t in zip(grads, (q, base.table)):
        torch.testing.assert_close(t.grad, g, rtol=0, atol=1e-6)


DDP_CHECK = """
import copy, sys
import torch
import torch.distributed as dist
from torch import nn
import relformer
from relformer import relations as R


class GraphAttention(nn.Module):  # owns a relation and binds it per batch, as the graph models do
    def __init__(self, H=2):
        super().__init__()
        self.spatial = R.ShortestPathBias(H, 3)
        with torch.no_grad():
            self.spatial.table.normal_()

    def forward(self, q, k, v, spd):
        return relformer.attend(q, k, v, self.spatial.bind(spd=spd), backend="eager")


torch.manual_seed(0)
model = GraphAttention()
reference_model = copy.deepcopy(model)
q, k, v = (torch.randn(1, 2, 6, 4) for _ in range(3))
spd = torch.randint(-1, 4, (1, 6, 6))
dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=0, world_size=1)
ddp = nn.parallel.DistributedDataParallel(model)
ddp(q, k, v, spd).square().sum().backward()
state = {name: t.clone() for name, t in ddp.module.state_dict().items()}
del ddp  # the reducer holds the process group: free it before the group goes
dist.destroy_process_group()
reference_model(q, k, v, spd).square().sum().backward()
torch.testing.assert_close(model.spatial.table.grad, reference_model.spatial.table.grad, rtol=0, atol=1e-6)
assert model.spatial.table.grad.abs().sum() > 0
again = GraphAttention()
again.load_state_dict(state)
torch.testing.assert_close(again(q, k, v, spd), model(q, k, v, spd), rtol=0, atol=0)
print("ok")
"""


def test_module_binding_a_relation_trains_under_ddp(tmp_path):
    """In a process of its own (gloo's teardown must not meet the rest of the suite's state), with
    a time limit: a hang fails instead of stalling the run."""
    src = str(Path(relformer.__file__).parents[1])  # the copy of relformer under test
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", DDP_CHECK, str(tmp_path / "store")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.split() == ["ok"], done.stdout + done.stderr

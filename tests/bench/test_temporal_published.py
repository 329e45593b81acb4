"""bench/temporal_published.py: the published-numbers section follows the study's ledger (mean ± std x 100
over the finished UCI seeds, EdgeBank from the ledger's baseline), keeps the page's other sections."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def published():
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("temporal_published", BENCH / "temporal_published.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCH))


def test_the_section_follows_the_ledger(published, tmp_path):
    keys = [f"{s}_{n}_{m}" for s in ("transductive", "inductive") for n in published.NEGATIVES for m in ("ap", "auc")]
    runs = {f"uci/dygformer-uci-s{seed}": dict.fromkeys(keys, 0.90 + seed / 100) for seed in (0, 1, 2)}
    runs["uci/tgn-uci-s0"] = dict.fromkeys(keys, 0.8)  # one seed: no std
    runs["hospital/tgn-hospital-s1"] = dict.fromkeys(keys, 0.1)  # another stream: not read
    ledger = tmp_path / "temporal.json"
    ledger.write_text(json.dumps({"runs": runs, "baselines": {"uci": dict.fromkeys(keys, 0.5)}}))
    page = tmp_path / "temporal.md"
    page.write_text("# Temporal link prediction — results\n\n## Other\n\nkept\n")
    published.main(["--ledger", str(ledger), "--out", str(page)])
    text = page.read_text()
    assert "kept" in text and "seeds 0, 1, 2, × 100" in text
    row = next(line for line in text.splitlines() if line.startswith("| transductive | historical | AP |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3:] == ["82.17 ± 0.82", "91.0 ± 1.0", "–", "80.43 ± 2.12", "80.0", "65.50", "50.0"]
    row = next(line for line in text.splitlines() if line.startswith("| inductive | random | AUC |"))
    assert row.rstrip(" |").endswith("| – | –")  # EdgeBank has no inductive-setting row
    published.main(["--ledger", str(ledger), "--out", str(page)])  # a rewrite replaces the section
    assert page.read_text().count(f"## {published.TITLE}") == 1

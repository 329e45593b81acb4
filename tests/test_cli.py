"""The relformer command: explain, and the attention benchmark end to end at a tiny size."""
import json

import pytest

from relformer.cli import main


def test_explain_prints_choice_and_reason(capsys):
    main(["explain", "--relation", "window", "--length", "1024"])
    assert capsys.readouterr().out.startswith("flex: inference with a block-sparse mask")
    main(["explain", "--relation", "relative", "--length", "2048", "--train"])
    assert capsys.readouterr().out.startswith("chunked:")


@pytest.mark.slow
def test_bench_attention_runs_and_writes_report(tmp_path, capsys):
    out = tmp_path / "attention.md"
    main(["bench", "attention", "--lengths", "128", "--reps", "1", "--memory-lengths", "128",
          "--relations", "none", "window", "urpe", "--packed-seqs", "4", "--out", str(out)])
    report = out.read_text()
    assert "## L = 128" in report and "Packed vs padded" in report
    assert "targets are defined at L = 2048" in report and "targets met" not in report  # no verdict at L=128
    rows = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    cases = {(r["relation"], r["mode"], r["backend"]) for r in rows}
    assert ("window", "fwd", "flex") in cases and ("urpe", "fwd+bwd", "chunked") in cases
    assert ("urpe", "fwd", "sdpa") not in cases  # no SDPA form: not measured, not faked
    assert all(r["ms"] > 0 and r["mib"] is not None for r in rows)

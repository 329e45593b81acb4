"""Every Python block of README.md runs as written (its inputs defined in the block), each in a
fresh namespace and an empty working folder; the YAML recipe runs through `relformer train`."""
import re
from pathlib import Path

import pytest

from relformer.cli import main

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
BLOCKS = [(README[:m.start()].count("\n") + 1, m.group(1)) for m in re.finditer(r"```python\n(.*?)```", README, re.S)]
YAML = re.search(r"```yaml\n(.*?)```", README, re.S).group(1)


def test_the_readme_has_its_examples():
    assert len(BLOCKS) >= 10
    assert "relformer train shapes.yaml" in README


@pytest.mark.slow
@pytest.mark.parametrize("line, code", BLOCKS, ids=[f"line{line}" for line, _ in BLOCKS])
def test_python_block_runs(line, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "__readme__"})


@pytest.mark.slow
def test_yaml_recipe_trains_from_the_cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shapes = next(code for _, code in BLOCKS if 'Path("shapes")' in code)
    exec(compile(shapes.split("recipe = ")[0], "README.md:shapes", "exec"), {"__name__": "__readme__"})
    (tmp_path / "shapes.yaml").write_text(YAML)
    main(["train", "shapes.yaml"])
    assert (tmp_path / "runs" / "shapes-cli" / "report.md").is_file()

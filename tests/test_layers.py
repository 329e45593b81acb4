"""The layer order holds: import-linter's layers contract (pyproject.toml) passes, and no two
modules of relformer import each other in a cycle, function-level imports included."""
import shutil
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]


def test_lint_imports_layers_contract_passes():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe is not None, "lint-imports is missing: install relformer[dev] (import-linter)"
    done = subprocess.run([exe, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 kept, 0 broken" in done.stdout, done.stdout


def test_no_import_cycle_between_subpackages():
    graph = grimp.build_graph("relformer", include_external_packages=False)
    packages = sorted(m for m in graph.find_children("relformer"))
    cycles = [(a, b) for a in packages for b in packages if a < b
              and graph.chain_exists(importer=a, imported=b, as_packages=True)
              and graph.chain_exists(importer=b, imported=a, as_packages=True)]
    assert cycles == [], f"subpackages that import each other: {cycles}"

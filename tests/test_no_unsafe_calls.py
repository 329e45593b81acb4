"""No code under src/ can execute data: no pickle (or marshal/shelve/dill), eval/exec, yaml.load
(only safe_load), shell=True, np.load(allow_pickle=True) or torch.load without weights_only=True.
Checked on the syntax tree of every module, so a comment or docstring that names them is fine."""
import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "relformer"
FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle", "joblib"}


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    return ""


def _keyword(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def unsafe_uses(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[0] in FORBIDDEN_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in FORBIDDEN_MODULES:
            found.append(f"from {node.module} import")
        elif isinstance(node, ast.Call):
            name = _name(node.func)
            if name in ("eval", "exec", "compile", "__import__"):
                found.append(f"{name}()")
            elif name.endswith(("yaml.load", "yaml.unsafe_load", "yaml.full_load")):
                found.append(name)
            elif name.split(".")[-1] == "load" and name.split(".")[0] in ("np", "numpy") and _is_true(_keyword(node, "allow_pickle")):
                found.append("np.load(allow_pickle=True)")
            elif name == "torch.load" and not _is_true(_keyword(node, "weights_only")):
                found.append("torch.load without weights_only=True")
            if _is_true(_keyword(node, "shell")):
                found.append(f"{name}(shell=True)")
    return found


def test_the_checker_finds_each_pattern():
    bad = ("import pickle\nfrom marshal import loads\neval('1')\nexec('x=1')\nyaml.load(s)\n"
           "np.load(p, allow_pickle=True)\ntorch.load(p)\nsubprocess.run(c, shell=True)\n")
    assert len(unsafe_uses(ast.parse(bad))) == 8
    ok = "yaml.safe_load(s)\nnp.load(p, allow_pickle=False)\ntorch.load(p, weights_only=True)\nmodel.eval()\n"
    assert unsafe_uses(ast.parse(ok)) == []


def test_no_unsafe_call_under_src():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 50
    found = {str(f.relative_to(SRC)): unsafe_uses(ast.parse(f.read_text(encoding="utf-8"))) for f in files}
    assert {f: u for f, u in found.items() if u} == {}

"""The one rule by which tools/ import seedream_jax (tools/_bootstrap.py): the checkout a tool lives
in, whatever copy is installed or on PYTHONPATH, from any working directory."""
import ast
import os
import subprocess
import sys
import types

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(REPO, "tools")
TOOL_FILES = sorted(f for f in os.listdir(TOOLS) if f.endswith(".py") and not f.startswith("_"))


def _decoy(root) -> str:
    """A directory holding another 'seedream_jax' whose import leaves a marker file and fails."""
    package = root / "decoy" / "seedream_jax"
    package.mkdir(parents=True)
    marker = root / "decoy_imported"
    (package / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n"
                                         "raise ImportError('the decoy seedream_jax was imported')\n")
    return str(root / "decoy")


@pytest.mark.parametrize("name", TOOL_FILES)
def test_every_tool_imports_the_bootstrap_first_and_says_so(name):
    with open(os.path.join(TOOLS, name), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    imports = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert isinstance(imports[0], ast.Import) and [a.name for a in imports[0].names] == ["_bootstrap"], name
    assert "tools/_bootstrap.py" in ast.get_docstring(tree), name
    source = ast.unparse(tree)
    assert "sys.path.insert" not in source and "sys.path.append" not in source, name  # one rule, in one place


def test_a_tool_run_from_another_directory_imports_its_own_checkout(tmp_path):
    """``python <repo>/tools/train_tokenizer.py --help`` from a temporary directory, with another
    seedream_jax first on PYTHONPATH: the tool runs, and the other copy is never imported."""
    decoy = _decoy(tmp_path)
    env = dict(os.environ, PYTHONPATH=decoy, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, os.path.join(TOOLS, "train_tokenizer.py"), "--help"], cwd=str(tmp_path),
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("usage: train_tokenizer.py")
    assert not (tmp_path / "decoy_imported").exists()
    # The same run, reporting which package the tool imported (runpy with the script's own
    # sys.path[0], as ``python tools/<tool>.py`` sets it).
    probe = ("import runpy, sys\n"
             f"sys.path[0] = {TOOLS!r}\n"
             f"sys.argv = [{os.path.join(TOOLS, 'train_tokenizer.py')!r}, '--help']\n"
             "try:\n"
             "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
             "except SystemExit:\n"
             "    pass\n"
             "print('PACKAGE', sys.modules['seedream_jax'].__file__)\n")
    out = subprocess.run([sys.executable, "-c", probe], cwd=str(tmp_path), env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines()[-1] == f"PACKAGE {os.path.join(REPO, 'seedream_jax', '__init__.py')}"
    assert not (tmp_path / "decoy_imported").exists()


def test_a_tool_imported_where_another_copy_is_loaded_fails_naming_both(tmp_path, monkeypatch):
    other = tmp_path / "other" / "seedream_jax"
    other.mkdir(parents=True)
    module = types.ModuleType("seedream_jax")
    module.__file__ = str(other / "__init__.py")
    monkeypatch.setattr(sys, "path", [TOOLS] + list(sys.path))
    monkeypatch.setitem(sys.modules, "seedream_jax", module)
    monkeypatch.delitem(sys.modules, "_bootstrap", raising=False)
    with pytest.raises(ImportError, match=rf"belongs to the checkout {REPO}, but this process already imported "
                                          rf"seedream_jax from {other}"):
        import _bootstrap  # noqa: F401

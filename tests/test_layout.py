"""The package boundaries the README's layout section promises, checked on the source."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imported_packages(path: Path) -> set:
    """Top-level package names a module imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


#: the entry points of sweep/ that write reports at their end: the sweep, and make compare
ENTRY_POINTS = ("__main__.py", "compare.py")


def test_sweep_never_imports_analysis_except_at_the_entry_points():
    # analysis builds on sweep (it reads studies); the other way round would be a package cycle
    offenders = sorted(
        p.name
        for p in (ROOT / "sweep").glob("*.py")
        if "analysis" in _imported_packages(p) and p.name not in ENTRY_POINTS
    )
    assert offenders == []
    # and the entry points really are where the reports are written
    assert all("analysis" in _imported_packages(ROOT / "sweep" / name) for name in ENTRY_POINTS)


def test_resume_logic_has_one_home():
    # the functions a re-run depends on are defined in sweep/resume.py and nowhere else
    names = {
        "fingerprint",
        "check_fingerprint",
        "run_fingerprint",
        "sweep_lock",
        "orphans",
        "crashed_attempts",
        "finished_result",
        "reuse_finished",
        "trial_identity",
        "save_checkpoint",
        "load_checkpoint",
    }
    defined = {}
    for p in list((ROOT / "sweep").glob("*.py")) + list((ROOT / "analysis").glob("*.py")):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name in names:
                defined.setdefault(node.name, []).append(p.name)
    assert defined == {n: ["resume.py"] for n in names}


def test_the_readme_layout_table_names_real_files_and_functions():
    import re

    text = (ROOT / "README.md").read_text()
    table = text[text.index("Where each decision lives") :]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "`" in line]
    assert len(rows) >= 10
    for row in rows:
        _, where, names = [c.strip() for c in row.strip("|").split("|")]
        paths = [ROOT / p for p in re.findall(r"`([\w/.]+)`", where)]
        assert all(p.exists() for p in paths), row
        sources = "".join(p.read_text() for p in paths if p.is_file())
        for name in re.findall(r"`(\w+)`", names):
            assert re.search(rf"^\s*(def|class) {name}\b", sources, re.M), (name, row)

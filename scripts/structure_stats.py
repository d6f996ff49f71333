"""The package's shape in three numbers: module lengths, function lengths, function-local imports.

    python scripts/structure_stats.py            # this checkout
    python scripts/structure_stats.py DIR        # another checkout (e.g. a `git worktree`)

tests/test_structure.py holds the limits; this prints where a checkout stands against them,
for a before/after comparison of a re-layout.
"""

import ast
import sys
from pathlib import Path


def stats(checkout: Path) -> dict:
    root = checkout / "src" / "mpigd"
    functions, local_imports, modules = [], 0, []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text()
        name = str(path.relative_to(root))
        modules.append((len(text.splitlines()), name))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions.append((node.end_lineno - node.lineno + 1, f"{name}:{node.name}"))
                local_imports += sum(
                    isinstance(sub, ast.ImportFrom) and bool(sub.level or (sub.module or "").startswith("mpigd"))
                    for sub in ast.walk(node))
    return {"modules": len(modules), "largest modules": sorted(modules)[-3:],
            "longest functions": sorted(functions)[-4:], "function-local project imports": local_imports}


if __name__ == "__main__":
    for key, value in stats(Path(sys.argv[1] if len(sys.argv) > 1 else ".")).items():
        print(f"{key}: {value}")

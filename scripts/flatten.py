"""One self-contained file from a training script: the script plus every project module it uses.

    python scripts/flatten.py train_gpt2_speedrun.py -o standalone/speedrun.py
    python standalone/speedrun.py --data webmix            # runs like the script itself

The file needs only the third-party packages the script imports (torch, numpy, ...). Each project
module the script imports, directly or through another (kit/ modules, and the scripts a variant
builds on, such as train_gpt2.py), is embedded verbatim as text and served to `import` by a small
loader at the top; the script's own source follows unchanged, so a run of the file logs that one
file as its source. Generated, never committed (standalone/ is ignored). Files the modules read
beside themselves resolve beside the flattened file: datasets go to its data/ (or KIT_DATA_DIR);
the offline tokenizer files (kit/data/gpt2_bpe) are not embedded.
"""

import argparse
import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

LOADER = '''
# ----- the project modules this script uses, embedded (written by scripts/flatten.py) -----
import importlib.abc as _abc
import importlib.util as _util
import linecache as _linecache
import sys as _sys
from pathlib import Path as _Path


class _EmbeddedModules(_abc.MetaPathFinder, _abc.Loader):
    """Serves the embedded modules to `import`, each with a file name beside this file (so that paths
    built from __file__ resolve here) whose lines linecache knows (so tracebacks, inspect and Triton
    read them)."""

    def __init__(self, sources, packages):
        self.sources, self.packages = sources, packages
        self.folder = _Path(__file__).resolve().parent

    def find_spec(self, name, path=None, target=None):
        if name not in self.sources:
            return None
        package = name in self.packages
        origin = str(self.folder.joinpath(*name.split("."), "__init__.py") if package else self.folder.joinpath(*name.split(".")).with_suffix(".py"))
        source = self.sources[name]
        _linecache.cache[origin] = (len(source), None, source.splitlines(True), origin)
        spec = _util.spec_from_loader(name, self, origin=origin, is_package=package)
        spec.has_location = True
        return spec

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        exec(compile(self.sources[module.__name__], module.__spec__.origin, "exec"), module.__dict__)


_sys.meta_path.insert(0, _EmbeddedModules(_EMBEDDED_SOURCES, _EMBEDDED_PACKAGES))
# ----- end of the embedded modules; the script follows -----
'''


def module_file(name: str):
    """The project file of a module name (a package's __init__.py), or None outside the project."""
    base = REPO.joinpath(*name.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def imported_names(source: str) -> set:
    """Every absolute module name a source imports, at the top or inside functions; `from p import m`
    also names p.m, which is a module where p is a package."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def project_modules(script: Path) -> dict:
    """{module name: its file} for every project module the script needs, with the packages above each."""
    found, todo = {}, [script.read_text()]
    while todo:
        for name in sorted(imported_names(todo.pop())):
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):  # a module's packages are imported before it
                prefix = ".".join(parts[:depth])
                path = module_file(prefix)
                if path is not None and prefix not in found and path.resolve() != script.resolve():
                    found[prefix] = path
                    todo.append(path.read_text())
    return found


def flatten(script: Path, modules: dict = None) -> str:
    """The flattened file's text: the script with `modules` (default: project_modules(script)) embedded."""
    modules = project_modules(script) if modules is None else modules
    sources = {name: path.read_text() for name, path in sorted(modules.items())}
    packages = sorted(name for name, path in modules.items() if path.name == "__init__.py")
    source = script.read_text()
    head, body = split_future_imports(source)
    embedded = "".join(f"\n# ----- {modules[name].relative_to(REPO)} -----\n_EMBEDDED_SOURCES[{name!r}] = {as_literal(text)}\n" for name, text in sources.items())
    block = (f"\n# Flattened from {script.name} by scripts/flatten.py: {len(sources)} project modules embedded below.\n"
             f"_EMBEDDED_SOURCES = {{}}\n{embedded}\n_EMBEDDED_PACKAGES = {packages!r}\n{LOADER}\n")
    return head + block + body  # without the block: the script, byte for byte


def as_literal(text: str) -> str:
    """A Python literal of the source text, its lines kept readable where they can be (a raw
    triple-quoted string, the newline after the opening quotes sliced off)."""
    if "'''" in text or text.endswith("\\"):
        return repr(text)
    return "r'''\n" + text + "'''[1:]"


def split_future_imports(source: str):
    """(the module docstring and any `from __future__` lines, the rest): those must stay first."""
    tree = ast.parse(source)
    end = 0
    for i, node in enumerate(tree.body):
        is_docstring = i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
        if is_docstring or (isinstance(node, ast.ImportFrom) and node.module == "__future__"):
            end = node.end_lineno
        else:
            break
    lines = source.splitlines(True)
    return "".join(lines[:end]), "".join(lines[end:])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("script", help="a training script, e.g. train_gpt2_speedrun.py")
    parser.add_argument("-o", "--output", required=True, help="the file to write, e.g. standalone/speedrun.py")
    args = parser.parse_args(argv)
    script = Path(args.script)
    if not script.is_file():
        print(f"flatten.py: error: no such script: {script}", file=sys.stderr)
        return 2
    out = Path(args.output)
    if out.resolve().parent == REPO:
        print(f"flatten.py: error: {out} would sit beside the project's own modules and import them; write it to another folder (e.g. standalone/)", file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    modules = project_modules(script)
    text = flatten(script, modules)
    out.write_text(text)
    print(f"wrote {out} ({len(text.splitlines()):,} lines: {script.name} and {len(modules)} project modules)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

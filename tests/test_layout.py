"""The README's layout picture is the import rule: each layer imports only from the layers below it (or
within itself), every module of kit/, every training script and every tool sits in exactly one layer,
and each kit/ layer is the package of that name."""

import re

from conftest import REPO, load_module


def readme_layers() -> list[tuple[str, set]]:
    """[(layer, {module names})] from the README's layout block, top to bottom: a line that starts in the
    first column opens a layer, an indented one continues it; words in parentheses describe, not name."""
    block = REPO.joinpath("README.md").read_text().split("## Layout", 1)[1].split("```", 2)[1]
    layers = []
    for line in block.strip().splitlines():
        label, text = (None, line) if line.startswith(" ") else (line[:20].strip(), line[20:])
        names = set(re.findall(r"[a-z_0-9]+", re.sub(r"\([^)]*\)", "", text)))
        if label:
            layers.append((label, names))
        else:
            layers[-1][1].update(names)
    return layers


def module_files() -> dict:
    """{module name as the picture calls it: path} for kit's modules, the training scripts and the tools."""
    files = {p.stem: p for p in REPO.glob("kit/*/*.py") if p.stem != "__init__"}
    files.update({p.stem: p for p in REPO.glob("scripts/*.py")})
    files.update({p.stem: p for p in REPO.glob("train_gpt2*.py")})
    return files


def layer_of(name: str, layers) -> int:
    if name.startswith("train_gpt2"):
        name = "train_gpt2*.py"
    found = [i for i, (label, names) in enumerate(layers) if name in names or label == name]
    assert len(found) == 1, f"{name} is in {len(found)} layers of the README's layout"
    return found[0]


def project_imports(path) -> set:
    """Project modules a file imports anywhere in it (function-level imports too), by the flatten tool's reading."""
    names = load_module("scripts/flatten.py", "flatten_tool").imported_names(path.read_text())
    modules = {name.split(".")[2] for name in names if name.startswith("kit.") and name.count(".") == 2}  # kit.<layer>.<module>
    return modules | {name for name in names if name.startswith("train_gpt2")}


def test_every_module_sits_in_one_layer_of_the_readme():
    layers = readme_layers()
    assert [label for label, _ in layers][:3] == ["scripts/", "kit/tools/", "train_gpt2*.py"]
    assert [p.name for p in REPO.glob("kit/*.py")] == ["__init__.py"], "every kit/ module sits in a layer's package"
    for name, path in module_files().items():
        label = layers[layer_of(name, layers)][0]
        if label.startswith("kit/"):  # the layer's package holds the module
            assert path.parent == REPO / label, f"{path.relative_to(REPO)} sits outside its layer's package {label}"
    listed = set().union(*(names for label, names in layers if label.startswith("kit/")))
    assert listed <= set(module_files()), f"the picture names modules that do not exist: {sorted(listed - set(module_files()))}"


def test_each_layer_imports_only_from_below_it():
    layers = readme_layers()
    files = module_files()
    upward = []
    for name, path in files.items():
        mine = layer_of(name, layers)
        for imported in project_imports(path) & set(files):
            if layer_of(imported, layers) < mine:
                upward.append(f"{path.relative_to(REPO)} imports {imported}")
    assert not upward, upward

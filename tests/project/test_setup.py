"""The set-up: README commands, CI, requirements and links between the docs pages."""
import ast
import importlib.metadata
import os
import re
import sys

from helpers import ROOT

SKIPPED_FOLDERS = {".git", ".venv", "__pycache__", "runs", "bert-base-uncased"}


FIRST_SCREEN_LINES = 40


README_MAX_LINES = 300


def read(*parts):
    with open(os.path.join(ROOT, *parts), encoding="utf-8") as f:
        return f.read()


def readme_section(title):
    """The text of README.md's `## title` section, up to the next `## ` heading."""
    return read("README.md").split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def code_lines(markdown):
    """The lines inside the ``` fences of a markdown text."""
    lines, inside = [], False
    for line in markdown.splitlines():
        if line.startswith("```"):
            inside = not inside
        elif inside:
            lines.append(line)
    return lines


def pytest_lines(lines):
    """The non-comment lines that run pytest."""
    return [line.strip() for line in lines if "python -m pytest" in line and not line.lstrip().startswith("#")]


def readme_test_command():
    commands = pytest_lines(code_lines(readme_section("Quick start")))
    assert len(commands) == 1, f"README's quick start should hold one test command, found {commands}"
    return commands[0]


def test_ci_runs_the_readme_test_command():
    command = readme_test_command()
    ci_lines = read(".ci", "run").splitlines()
    assert pytest_lines(ci_lines) == [command], ".ci/run must run the README's test command as written"
    stripped = [line.strip() for line in ci_lines]
    torch_pin = next(i for i, line in enumerate(stripped) if re.match(r"python -m pip install .*torch==\d", line))
    assert torch_pin < stripped.index(command), ".ci/run must pin the CPU torch before the test command"
    assert "ruff check ." in stripped


def test_readme_commands_on_the_first_screen():
    lines = read("README.md").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; reference goes to docs/"
    first_screen = lines[:FIRST_SCREEN_LINES]
    assert readme_test_command() in first_screen
    assert any("sh train_demo.sh" in line and "pip install" in line for line in first_screen)


def requirement_lines(name):
    lines = (line.split("#", 1)[0].strip() for line in read(name).splitlines())
    return [line for line in lines if line]


def distribution_key(requirement):
    """'faiss-cpu>=1.7' -> 'faiss-cpu'; names compared in their normalised form (PEP 503)."""
    name = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement.strip()).group(0)
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_distributions(name):
    """Distribution names a requirements file asks for, following `-r` includes."""
    names = set()
    for line in requirement_lines(name):
        if line.startswith("-r"):
            names |= declared_distributions(line[2:].strip())
        else:
            names.add(distribution_key(line))
    return names


def installed_with(names):
    """`names` and everything they require when installed (optional extras left out)."""
    found, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        todo += [distribution_key(req) for req in requires if not re.search(r"\bextra\s*==", req)]
    return found


def python_files():
    for folder, subfolders, files in os.walk(ROOT):
        subfolders[:] = [sub for sub in subfolders if sub not in SKIPPED_FOLDERS]
        yield from (os.path.join(folder, name) for name in files if name.endswith(".py"))


def imported_modules(path):
    """Top-level names of the absolute imports of one file."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module.split(".")[0]


def third_party_imports():
    """{module: first file importing it} for every import that is neither stdlib nor this repository's."""
    files = list(python_files())
    local = {os.path.splitext(os.path.basename(path))[0] for path in files}
    local |= {entry for entry in os.listdir(ROOT) if os.path.isdir(os.path.join(ROOT, entry))}
    found = {}
    for path in files:
        for module in imported_modules(path):
            if module not in sys.stdlib_module_names and module not in local:
                found.setdefault(module, os.path.relpath(path, ROOT))
    return found


def test_requirements_for_tests_include_the_requirements():
    assert "-r requirements.txt" in requirement_lines("requirements-tests.txt")
    assert declared_distributions("requirements.txt") < declared_distributions("requirements-tests.txt")


def test_every_import_is_declared_for_the_tests():
    provided = installed_with(declared_distributions("requirements-tests.txt"))
    by_module = importlib.metadata.packages_distributions()
    undeclared = {module: path for module, path in third_party_imports().items()
                  if not provided & {distribution_key(dist) for dist in by_module.get(module, [])}}
    assert not undeclared, f"imported but not installed by requirements-tests.txt: {undeclared}"


def test_the_import_scan_sees_the_optional_libraries():
    imports = third_party_imports()
    assert {"torch", "numpy", "transformers", "matplotlib", "faiss", "pytest"} <= set(imports)
    assert not {"lib", "conftest", "os", "train"} & set(imports)


def heading_anchor(heading):
    """GitHub's anchor of a markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def prose_lines(markdown):
    lines, inside = [], False
    for line in markdown.splitlines():
        if line.startswith("```"):
            inside = not inside
        elif not inside:
            lines.append(line)
    return lines


def anchors(path):
    seen, result = {}, set()
    for line in prose_lines(read(path)):
        match = re.match(r"#+ (.*)", line)
        if match:
            anchor = heading_anchor(match.group(1))
            count = seen.get(anchor, 0)
            result.add(anchor if count == 0 else f"{anchor}-{count}")
            seen[anchor] = count + 1
    return result


def doc_pages():
    return ["README.md"] + [os.path.join("docs", name) for name in sorted(os.listdir(os.path.join(ROOT, "docs")))
                            if name.endswith(".md")]


def test_heading_anchor_follows_github():
    assert heading_anchor("Two-stage recalls: `--shortlist K`") == "two-stage-recalls---shortlist-k"
    assert heading_anchor("The paper's recipe") == "the-papers-recipe"
    assert heading_anchor("Your own features: `convert_features.py`") == "your-own-features-convert_featurespy"


def test_links_between_the_pages_resolve():
    broken = []
    for page in doc_pages():
        for line in prose_lines(read(page)):
            for target in re.findall(r"\]\(([^)\s]+)\)", line):
                if re.match(r"[a-z]+://", target):
                    continue
                file_part, _, anchor = target.partition("#")
                linked = os.path.normpath(os.path.join(os.path.dirname(page), file_part)) if file_part else page
                if not os.path.exists(os.path.join(ROOT, linked)):
                    broken.append(f"{page}: {target} (no file {linked})")
                elif anchor and (not linked.endswith(".md") or anchor not in anchors(linked)):
                    broken.append(f"{page}: {target} (no heading #{anchor} in {linked})")
    assert not broken, "\n".join(broken)

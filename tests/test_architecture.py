"""The layering docs/architecture.md describes, checked on the source: no import circles inside
the pipeline, and the seams module depends on nothing else of it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PIPELINE = Path(__file__).resolve().parents[1] / "naf_cli" / "pipeline"
PACKAGE = "naf_cli.pipeline"


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, modules: set[str], annotations: bool) -> set[str]:
    """Modules of the package (dotted names below it: ``run``, ``hdf5.sink``) a module imports, at
    module level or inside functions; with ``annotations``, in ``if TYPE_CHECKING:`` blocks too."""
    found: set[str] = set()

    def module_of(dotted: str) -> str | None:
        """The longest known module a dotted name below the package starts with."""
        parts = dotted.split(".")
        for end in range(len(parts), 0, -1):
            if ".".join(parts[:end]) in modules:
                return ".".join(parts[:end])
        return None

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node) and not annotations:
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom) and node.module and (node.module + ".").startswith(PACKAGE + "."):
            base = node.module.removeprefix(PACKAGE).lstrip(".")
            for alias in node.names:
                found.add(module_of(f"{base}.{alias.name}".lstrip(".")) or "")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(PACKAGE + "."):
                    found.add(module_of(alias.name.removeprefix(PACKAGE + ".")) or "")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found - {""}


def import_graph(folder: Path, annotations: bool = True) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (``annotations``: type-only imports count too).
    Subpackages count as modules of their own (``hdf5`` for ``hdf5/__init__.py``); the
    package's own ``__init__`` (what ``import naf_cli.pipeline`` runs) does not."""
    paths = {}
    for path in folder.rglob("*.py"):
        parts = path.relative_to(folder).with_suffix("").parts
        parts = parts[:-1] if parts[-1] == "__init__" else parts
        if parts:
            paths[".".join(parts)] = path
    return {module: _imports(ast.parse(path.read_text(encoding="utf-8")), set(paths), annotations) - {module}
            for module, path in sorted(paths.items())}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" after

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = "open"
        for other in sorted(graph.get(module, ())):
            if state.get(other) == "open":
                return [*path[path.index(other):], other]
            if other not in state and (cycle := visit(other, [*path, other])):
                return cycle
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module, [module])):
            return cycle
    return None


def test_the_pipeline_has_no_import_circle():
    # type-only imports count: a circle through annotations is still two modules that cannot
    # be understood, changed or moved one without the other
    cycle = find_cycle(import_graph(PIPELINE))
    assert cycle is None, "import circle in naf_cli.pipeline: " + " -> ".join(cycle or [])


def test_the_seams_import_nothing_else_of_the_pipeline():
    assert import_graph(PIPELINE, annotations=False)["seams"] == set()


def test_the_circle_finder_finds_circles(tmp_path):
    # the checks above must be able to fail: function-level imports count, type-only ones
    # count unless left out
    (tmp_path / "a.py").write_text("from naf_cli.pipeline.b import x\n")
    (tmp_path / "b.py").write_text("def f():\n    from naf_cli.pipeline import c\n")
    (tmp_path / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from naf_cli.pipeline.a import y\n")
    graph = import_graph(tmp_path, annotations=False)
    assert graph == {"a": {"b"}, "b": {"c"}, "c": set()}
    assert find_cycle(graph) is None
    assert find_cycle(import_graph(tmp_path)) == ["a", "b", "c", "a"]
    (tmp_path / "c.py").write_text("import naf_cli.pipeline.a\n")
    assert find_cycle(import_graph(tmp_path)) == ["a", "b", "c", "a"]
    # modules of a subpackage, imported as modules or through their package
    (tmp_path / "c.py").write_text("from naf_cli.pipeline.sub import d\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "__init__.py").write_text("")
    (tmp_path / "sub" / "d.py").write_text("from naf_cli.pipeline.sub.e import f\n")
    (tmp_path / "sub" / "e.py").write_text("from naf_cli.pipeline import a\n")
    graph = import_graph(tmp_path)
    assert graph["c"] == {"sub.d"} and graph["sub.d"] == {"sub.e"} and graph["sub"] == set()
    assert find_cycle(graph) == ["a", "b", "c", "sub.d", "sub.e", "a"]


def test_a_job_spec_takes_keywords_only(tmp_path):
    from naf_cli.pipeline.job import JobSpec, UpsampleSpec

    with pytest.raises(TypeError):
        JobSpec([tmp_path], tmp_path / "o.h5")  # type: ignore[misc]
    with pytest.raises(TypeError):
        UpsampleSpec("naf")  # type: ignore[misc]
    spec = JobSpec(inputs=[tmp_path], output=tmp_path / "o.h5", upsample=UpsampleSpec(scale=8))
    assert spec.vfm == "effnet-lite0" and spec.upsample is not None and spec.upsample.upsampler == "naf"


def test_the_library_runs_the_commands_checks_before_any_work(tmp_path, examples_dir):
    """``upsample_folder`` takes the job path of ``naf upsample``: an output that can never fit
    (here: on disk) is refused up front with the command's line, not skipped image by image."""
    from naf_cli import load_backbone, load_naf, upsample_folder
    from naf_cli.errors import OptionError
    from naf_cli.pipeline import OutputSize
    from naf_cli.upsamplers import UpsamplerInfo

    out = tmp_path / "o.h5"
    with pytest.raises(OptionError, match=r"(outputs up to 100000x100000 with 112 channels .* more than the .* available|the run "
                                          r"would write about .* more than the .* free on the disk of .*); fix:"):
        upsample_folder(examples_dir, out, load_backbone("effnet-lite0"), load_naf(), UpsamplerInfo("naf"),
                        output_size=OutputSize("fixed", fixed=(100000, 100000)))
    assert list(tmp_path.iterdir()) == []  # nothing written, no lock left


def test_the_library_writes_with_the_callers_upsampler_without_its_info(tmp_path, examples_dir):
    """An upsampler passed without an UpsamplerInfo is used (named after its class), never
    swapped for the default weights."""
    import shutil

    import h5py

    from naf_cli import load_backbone, upsample_folder
    from naf_cli.upsamplers import load_upsampler

    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(examples_dir / "chelsea.jpg", photos)
    bilinear, _ = load_upsampler("bilinear")
    summary = upsample_folder(photos, tmp_path / "o.h5", load_backbone("effnet-lite0"), bilinear, None, scale=2, workers=0)
    assert summary.done == 1
    with h5py.File(tmp_path / "o.h5", "r") as f:
        assert f.attrs["upsampler"] == type(bilinear).__name__.lower() != "naf"

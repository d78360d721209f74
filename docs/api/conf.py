"""Sphinx configuration of the API reference (``pip install -e '.[docs]'``, then
``sphinx-build -W --keep-going -n -b html docs/api build/docs``; .ci/run does this).

Every module of ``vfio_user_mig`` gets a page generated from its docstrings (autodoc,
autosummary with a recursive module template). The build is nitpicky: a cross-reference to a
``vfio_user_mig`` name that does not exist is a warning, and ``-W`` makes every warning an
error. References outside the package (the standard library, third-party types in signatures)
are not checked: the build reads no inventory over the network.
"""

from __future__ import annotations

import builtins
import importlib
import inspect
from typing import Any

from docutils import nodes
from sphinx.addnodes import pending_xref
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment

project = "vfio-user-mig"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.autosummary"]
templates_path = ["_templates"]
exclude_patterns = ["_build"]
autosummary_generate = True
autodoc_default_options = {"ignore-module-all": True, "undoc-members": True}
autodoc_member_order = "bysource"
html_theme = "alabaster"
html_title = "vfio-user-mig API reference"
nitpicky = True
# Only names of this package are checked (nothing outside it is documented here).
nitpick_ignore_regex = [(r"py:.*", r"(?!vfio_user_mig\b).*")]


def _lookup(path: str) -> Any:
    """The object a dotted path names (the longest importable module, then attributes), or
    :data:`_MISSING`."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr, _MISSING)
            if obj is _MISSING:
                return _MISSING
        return obj
    return _MISSING


_MISSING = object()


def _canonical(obj: Any) -> str | None:
    """Where a module, class or function is defined (and documented), as a dotted path."""
    if inspect.ismodule(obj):
        return obj.__name__
    if inspect.isclass(obj) or inspect.isfunction(obj):
        return f"{obj.__module__}.{obj.__qualname__}"
    return None


def _rewrite_targets(app: Sphinx, doctree: nodes.document) -> None:
    """Point each reference to a ``vfio_user_mig`` name at its definition, as Python resolves
    the name in the module that mentions it: ``:mod:`.dma``` in ``simulator/server/core.py`` is
    the sibling module ``simulator.server.dma``; a name imported into a module or re-exported
    by a package (``vfio_user_mig.model.transition_path``) is the object it is bound to. A
    type variable in a signature is plain text. Names that resolve to nothing are left as
    written, so the nitpicky build reports them."""
    for node in list(doctree.findall(pending_xref)):
        if node.get("refdomain") != "py":
            continue
        target = str(node.get("reftarget", ""))
        module = node.get("py:module") or ""
        candidates = [target] if target.startswith("vfio_user_mig.") else []
        if module and not target.startswith("vfio_user_mig."):
            package = module if hasattr(_lookup(module), "__path__") else \
                module.rpartition(".")[0]
            if node.get("reftype") == "mod":
                candidates.append(f"{package}.{target}")
            if node.get("py:class"):
                candidates.append(f"{module}.{node['py:class']}.{target}")
            candidates.append(f"{module}.{target}")
        if not candidates or hasattr(builtins, target):
            # A builtin in a signature (``type``, ``int``): no fuzzy search among the
            # package's attributes of that name.
            if hasattr(builtins, target) and _lookup(f"{module}.{target}") is _MISSING:
                node.attributes.pop("refspecific", None)
            if not candidates:
                continue
        for candidate in candidates:
            action = _resolve(candidate)
            if action is None:
                continue
            if action == "":
                node.replace_self(node.children)
            else:
                node["reftarget"] = action
            break


def _resolve(path: str) -> str | None:
    """What a reference to ``path`` becomes: the documented dotted path of its definition, ``""``
    for plain text (a type variable or type alias: it exists but has no entry of its own), or
    ``None`` when ``path`` names nothing."""
    obj = _lookup(path)
    parent_path, _, name = path.rpartition(".")
    parent = _lookup(parent_path) if parent_path else _MISSING
    if obj is _MISSING:
        # A dataclass field without a default exists only as an annotation of its class.
        if inspect.isclass(parent) and any(name in getattr(k, "__annotations__", {})
                                           for k in parent.__mro__):
            return f"{_canonical(parent)}.{name}"
        return None
    canonical = _canonical(obj)
    if canonical and canonical.startswith("vfio_user_mig"):
        return canonical
    if canonical:
        return None  # defined outside the package: not documented here
    if inspect.isclass(parent):
        return f"{_canonical(parent)}.{name}"  # an attribute of a documented class
    return ""


def _private(app: Sphinx, env: BuildEnvironment, node: pending_xref,
             contnode: nodes.TextElement) -> nodes.Element | None:
    """A reference to a private name of the package (``campaign._Run`` in a signature), or to
    module data that exists but has no entry (a constant without a doc comment), is plain
    text. A name that does not exist stays unresolved and fails the build."""
    target = str(node.get("reftarget", ""))
    if not target.startswith("vfio_user_mig."):
        return None
    if any(part.startswith("_") and not part.startswith("__") for part in target.split(".")):
        return contnode
    obj = _lookup(target)
    if obj is not _MISSING and _canonical(obj) is None:
        return contnode
    return None


def setup(app: Sphinx) -> None:
    app.connect("doctree-read", _rewrite_targets)
    app.connect("missing-reference", _private)

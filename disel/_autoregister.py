"""Register DISeL with PEFT when ``peft`` is imported, so a saved DISeL adapter loads without ``import disel``.

The install ships ``disel-autoregister.pth`` in site-packages. Python runs its one line at start-up; the line
executes this file's source (standard library only, so start-up imports nothing of ``disel``, ``torch`` or
``peft``) and calls :func:`install`, which puts :class:`PeftImportWatcher` at the front of ``sys.meta_path``.
The watcher does nothing until the first ``import peft`` (or ``import peft.<submodule>``); then it lets
PEFT's own loader run and afterwards imports ``disel``, whose import registers the type ``"DISEL"``.
It removes itself from ``sys.meta_path`` once ``peft`` has been imported; until then a lookup that does not
import (``importlib.util.find_spec("peft")``, as libraries probe for PEFT) changes nothing.

* ``DISEL_NO_AUTO_REGISTER=1`` (any value but ``""`` or ``"0"``) switches it off: at start-up nothing is
  installed, and a watcher installed earlier in the process does nothing.
* It never makes ``import peft`` fail: if ``disel`` is not importable any more (uninstalled package,
  deleted editable checkout), nothing happens; any other error while importing ``disel`` becomes a
  warning that says to ``import disel`` by hand to see it.

The ``.pth`` file is written by ``setup.py`` from this source (see ``pth_line`` there), for normal and
editable installs alike.
"""

import os
import sys

ENV_VAR = "DISEL_NO_AUTO_REGISTER"
PTH_NAME = "disel-autoregister.pth"


def disabled() -> bool:
    """Whether the environment switches auto-registration off (``DISEL_NO_AUTO_REGISTER`` not empty or "0")."""
    return os.environ.get(ENV_VAR, "") not in ("", "0")


class PeftImportWatcher:
    """A ``sys.meta_path`` finder that only ever answers for ``peft``: it finds PEFT's real spec and wraps
    the loader so that ``disel`` is imported right after ``peft`` has executed."""

    # Recognises a watcher from another copy of this source: site.py may process the .pth more than once
    # (each run execs a fresh copy, so isinstance cannot tell).
    is_disel_peft_import_watcher = True

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "peft" or disabled():
            return None
        # Ask the other finders. Not importlib.util.find_spec: that is also how libraries probe
        # whether peft is installed (transformers does), and a probe must neither recurse here nor use us up.
        for finder in list(sys.meta_path):
            if getattr(finder, "is_disel_peft_import_watcher", False) or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _RegisteringLoader(spec.loader, self)
                return spec
        return None

    def remove(self) -> None:
        while self in sys.meta_path:
            sys.meta_path.remove(self)


class _RegisteringLoader:
    """Delegates to PEFT's loader; once ``peft`` has executed, retires the watcher and imports ``disel``
    (whose import calls ``register_disel``)."""

    def __init__(self, loader, watcher):
        self.loader = loader
        self.watcher = watcher

    def __getattr__(self, name):  # get_resource_reader, is_package, get_source, ... stay PEFT's
        return getattr(self.loader, name)

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        # peft sees its own loader, as if this wrapper had never been there
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        self.watcher.remove()  # peft is in sys.modules now: the watcher has nothing left to watch
        register_quietly()


def register_quietly() -> None:
    """``import disel`` without ever raising: missing package → nothing; any other error → a warning."""
    try:
        import disel  # noqa: F401  (its import registers DISeL with PEFT)
    except ModuleNotFoundError as error:
        if error.name != "disel":
            _warn(error)
    except Exception as error:  # noqa: BLE001  (peft's import must not fail because of disel)
        _warn(error)


def _warn(error: BaseException) -> None:
    import warnings

    warnings.warn(
        f"disel could not register itself with PEFT when peft was imported ({type(error).__name__}: {error}); "
        f"DISeL adapters will not load until you `import disel` (do so to see the full error, or set "
        f"{ENV_VAR}=1 to silence this)",
        RuntimeWarning,
        stacklevel=2,
    )


def install() -> None:
    """Put a :class:`PeftImportWatcher` in front of ``sys.meta_path``, unless switched off or pointless
    (PEFT already imported: then ``disel`` is imported now only if PEFT is, which it is, so do that)."""
    if disabled():
        return
    if "peft" in sys.modules:  # e.g. install() called by hand late; register now
        register_quietly()
        return
    if not any(getattr(finder, "is_disel_peft_import_watcher", False) for finder in sys.meta_path):
        sys.meta_path.insert(0, PeftImportWatcher())

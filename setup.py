"""Build step that ships ``disel-autoregister.pth`` (see disel/_autoregister.py); everything else is in
pyproject.toml.

The ``.pth`` goes to the root of site-packages. A normal wheel copies all of ``build_lib``, so the file is
written there. An editable install (PEP 660) does not: setuptools puts the files of its unpacked wheel
(``install_lib`` of the editable build) next to its own finder, so in editable mode the file goes there.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HOOK_SOURCE = Path(__file__).resolve().parent / "disel" / "_autoregister.py"
PTH_NAME = "disel-autoregister.pth"


def pth_line() -> str:
    # One line starting with "import" (the only kind site.py executes). The hook's source runs in a fresh
    # namespace; any error is swallowed so a broken hook can never break interpreter start-up.
    source = HOOK_SOURCE.read_text(encoding="utf-8") + "\ntry:\n    install()\nexcept Exception:\n    pass\n"
    return (
        "import os, sys; os.environ.get('DISEL_NO_AUTO_REGISTER', '') not in ('', '0') or "
        f"exec(compile({source!r}, {PTH_NAME!r}, 'exec'), {{'__name__': '_disel_autoregister'}})\n"
    )


class BuildPyWithPth(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            target = Path(self.get_finalized_command("install").install_lib)
        else:
            target = Path(self.build_lib)
        target.mkdir(parents=True, exist_ok=True)
        (target / PTH_NAME).write_text(pth_line(), encoding="utf-8")

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = super().get_outputs(include_bytecode)
        if not getattr(self, "editable_mode", False):
            outputs.append(str(Path(self.build_lib) / PTH_NAME))
        return outputs


setup(cmdclass={"build_py": BuildPyWithPth})

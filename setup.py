"""Build hook: the wheel carries the project's top-level data folders inside the package.

The source tree keeps one copy of each file where the project shows it (model_repo_templates/,
dockerfiles/, perf/presets/); building a (non-editable) wheel copies them to tritonkit/share/<same
path>, where tritonkit.paths.shipped() finds them. An editable install reads the source tree.
Everything else is declared in setup.cfg; MANIFEST.in puts the same folders in the sdist.
"""

import os

from setuptools import setup
from setuptools.command.build_py import build_py

SHIPPED_FOLDERS = ("model_repo_templates", "dockerfiles", os.path.join("perf", "presets"))


class BuildPyWithShipped(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # editable: tritonkit.paths reads the source tree itself
        for folder in SHIPPED_FOLDERS:
            self.copy_tree(folder, os.path.join(self.build_lib, "tritonkit", "share", folder))

    def get_outputs(self, include_bytecode=True):
        outputs = list(super().get_outputs(include_bytecode))
        for folder in SHIPPED_FOLDERS:
            for root, _dirs, files in os.walk(folder):
                outputs += [os.path.join(self.build_lib, "tritonkit", "share", root, f) for f in files]
        return outputs


setup(cmdclass={"build_py": BuildPyWithShipped})

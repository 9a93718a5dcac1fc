"""Package layout: the design card keeps ops/, train/ and eval/ at the top of the tree, but users import
them as seqzoo.ops, seqzoo.train and seqzoo.eval. setuptools' package_dir does that mapping; the package
list is found here so that a new op folder never needs an edit to the build files."""

from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

# lm-eval 0.4.13 has no plugin discovery: this .pth file, installed at the top of site-packages, registers
# the harness model `seqzoo` when (and only when) the lm_eval CLI runs. See eval/harness/plugin.py.
PTH = Path("eval/harness/seqzoo-lm-eval.pth")


class build_py_with_pth(build_py):
    def run(self):
        super().run()
        self.copy_file(str(PTH), str(Path(self.build_lib) / PTH.name), preserve_mode=0)

    def get_outputs(self, include_bytecode=True):
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib) / PTH.name)]


class _WithPth:
    """Wraps an editable-install strategy: its wheel gets the .pth file too (editable wheels hold no
    build_py output of their own; tests/test_lm_eval.py checks that `lm_eval --model seqzoo` works)."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, wheel, files, mapping):
        self.inner(wheel, files, mapping)
        wheel.writestr(PTH.name, PTH.read_bytes())

    def __enter__(self):
        self.inner.__enter__()
        return self

    def __exit__(self, *exc):
        return self.inner.__exit__(*exc)


cmdclass = {"build_py": build_py_with_pth}
try:
    from setuptools.command.editable_wheel import editable_wheel

    class editable_wheel_with_pth(editable_wheel):
        def _select_strategy(self, *args, **kwargs):
            return _WithPth(super()._select_strategy(*args, **kwargs))

    cmdclass["editable_wheel"] = editable_wheel_with_pth
except ImportError:  # setuptools < 64: no PEP 660 editable wheels
    pass


ROOTS = {
    "seqzoo": "seqzoo",
    "seqzoo.ops": "ops",
    "seqzoo.train": "train",
    "seqzoo.eval": "eval",
    "seqzoo.csrc": "csrc",  # CUDA sources, shipped as data and compiled by nvcc on first use
}

packages = []
for package, folder in ROOTS.items():
    packages.append(package)
    packages += [f"{package}.{sub}" for sub in find_packages(folder)]

setup(
    packages=packages,
    package_dir=ROOTS,
    package_data={
        "seqzoo.layers": ["ptd_data/*.safetensors"],  # PTD's optimised perturbations (seqzoo/layers/ptd.py)
        "seqzoo.csrc": ["*.cu", "*.cuh", "*.h", "**/*.cu", "**/*.cuh", "**/*.h"],
        "seqzoo.train": ["configs/*.yaml", "configs/**/*.yaml"],
        "seqzoo.eval": ["configs/*.yaml", "configs/**/*.yaml", "harness/tasks/*.yaml"],
    },
    include_package_data=True,
    cmdclass=cmdclass,
)

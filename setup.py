"""Package layout: the design card keeps ops/, train/ and eval/ at the top of the tree, but users import
them as seqzoo.ops, seqzoo.train and seqzoo.eval. setuptools' package_dir does that mapping; the package
list is found here so that a new op folder never needs an edit to the build files."""

from setuptools import find_packages, setup

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
        "seqzoo.csrc": ["*.cu", "*.cuh", "*.h", "**/*.cu", "**/*.cuh", "**/*.h"],
        "seqzoo.train": ["configs/*.yaml", "configs/**/*.yaml"],
        "seqzoo.eval": ["configs/*.yaml", "configs/**/*.yaml"],
    },
    include_package_data=True,
)

"""Packaging for pyinfra-ratos.

The design card wants the pyinfra-facing folders (deploys/ facts/ operations/ inventory/
templates/) at the top of the repository, while installed they must live under the single
namespace ``pyinfra_ratos``: ``package_dir`` maps each folder into that namespace, so nothing
generic (``facts``, ``operations``...) ever lands in site-packages.
"""

from setuptools import find_packages, setup

SUBPACKAGES = ["deploys", "facts", "operations", "inventory", "templates"]

setup(
    name="pyinfra-ratos",
    version="0.1.0",
    description="Provision RatOS (Klipper) Raspberry Pis and print farms with pyinfra",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    # every package of the namespace (the rooms and their subpackages), found, not listed by hand
    packages=[
        *find_packages(include=["pyinfra_ratos", "pyinfra_ratos.*"]),
        *(f"pyinfra_ratos.{name}" for name in SUBPACKAGES),
    ],
    package_dir={
        "pyinfra_ratos": "pyinfra_ratos",
        **{f"pyinfra_ratos.{name}": name for name in SUBPACKAGES},
    },
    include_package_data=True,
    package_data={
        "pyinfra_ratos.firmware": ["boards/*.toml"],
        "pyinfra_ratos.fleet": ["report_templates/*.j2"],
        "pyinfra_ratos.sim": ["klipper_tree/**/*", "klipper_tree/*", "scenarios/*.toml"],
        "pyinfra_ratos.templates": ["**/*.j2", "*.j2"],
        "pyinfra_ratos.inventory": ["*.py", "group_data/*.py", "known_hosts"],
    },
    install_requires=[
        "pyinfra>=3.10,<4",
        "jinja2>=3.1",
        "paramiko>=3",
        "pyusb>=1.2",
        # stdlib tomllib arrived in 3.11; the backport reads the board catalog and scenarios
        'tomli>=2; python_version < "3.11"',
    ],
    extras_require={
        # the virtual farm's Klipper tree resolves Kconfig with the library real Klipper vendors
        "sim": ["kconfiglib>=14.1"],
        # hypothesis drives the inventory validation with generated hostile values
        "test": ["kconfiglib>=14.1", "pytest>=7", "hypothesis>=6"],
    },
    entry_points={"console_scripts": ["ratos-fleet=pyinfra_ratos.fleet.cli:main"]},
)

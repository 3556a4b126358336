from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="caffegen",
    version="0.1.0",
    description="Turn a pretrained BVLC Caffe model into a correct fine-tuning job and run it.",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="BSD-2-Clause",
    python_requires=">=3.9",
    packages=find_packages(include=["caffegen", "caffegen.*"]) + ["caffegen.templates", "caffegen.models"],
    package_dir={"caffegen.templates": "templates", "caffegen.models": "models"},
    package_data={"caffegen.templates": ["*.j2"], "caffegen.models": ["*/*.prototxt", "*/*.caffemodel", "zoo.json"]},
    install_requires=[
        "protobuf>=6.31.1,<8",
        "grpcio-tools>=1.85,<2",
        "click>=8.1",
        "jinja2>=3.0",
        "numpy>=1.24",
        "pillow>=9.0",
        "tqdm>=4.60",
        "matplotlib>=3.5",
        "scikit-learn>=1.0",
        "h5py>=3",
        "lmdb>=1.0",
    ],
    extras_require={
        "opencv": ["opencv-python-headless>=4.5,<5"],
        "onnx": ["onnx>=1.15", "onnxruntime>=1.17"],
        "openvino": ["openvino>=2024.0", "onnx>=1.15"],
        # tensorboardX writes TensorBoard's files with numpy and protobuf only (no TensorFlow or PyTorch).
        "tensorboard": ["tensorboardX>=2.6"],
        # Not mlflow-skinny: it lacks the SQL store, and MLflow's file store is in maintenance mode.
        "mlflow": ["mlflow>=3"],
        "test": ["pytest>=7", "pytest-xdist>=3.5", "grpcio-tools==1.85.1", "opencv-python-headless>=4.5,<5",
                 "onnx>=1.15", "onnxruntime>=1.17", "openvino>=2024.0", "tensorboardX>=2.6", "tensorboard>=2.14",
                 "mlflow>=3"],
    },
    entry_points={"console_scripts": ["caffegen = caffegen.cli:main"]},
)

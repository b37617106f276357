from setuptools import find_packages, setup

setup(
    name="recursive-latent",
    version="0.1.0",
    description="Recursive latent reasoning on pretrained GPT-2 and Mamba2 backbones, Hugging Face compatible.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["recursive_latent", "recursive_latent.*", "dataset_scripts", "model_cards"]),
    package_data={"model_cards": ["template.md"]},
    # torch is installed first and pinned by the Makefile (torch==2.13.0, CPU build); any 2.x that satisfies
    # the range below installs nothing more.
    install_requires=[
        "torch>=2.4,<3",
        "transformers==5.23.0",
        "accelerate==1.15.0",
        "peft==0.21.2",
        "datasets==5.2.0",
        "evaluate==0.4.6",
        "safetensors==0.8.0",
        "huggingface-hub==2.4.0",
        "tokenizers==0.23.3",
        "pyyaml>=6",
        "tqdm>=4.66",
    ],
    extras_require={
        "dev": ["pytest==9.2.0", "matplotlib==3.11.2"],
        "cuda": ["mamba-ssm>=2.2", "causal-conv1d>=1.4"],
        "app": ["gradio==6.31.0", "gradio_client==2.7.2", "matplotlib==3.11.2"],  # python app.py (make app)
    },
)

from setuptools import find_packages, setup

setup(
    name="fairseq-slt",
    version="0.2.0",
    description="Stabilized lottery ticket pruning for fairseq Transformers (Brix, Bahar & Ney, ACL 2020)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["fairseq_slt", "fairseq_slt.*"]),
    package_data={"fairseq_slt": ["csr_kernel.cpp", "beam_topk.cpp"]},  # compiled on first use (native.py)
    python_requires=">=3.11",
    install_requires=[
        "fairseq-fixed==0.12.3.1",  # fairseq's main branch packaged for Python 3.11+ (import name: fairseq)
        "torch>=2.1",
        "sacrebleu>=2.0",
        "sentencepiece>=0.1.99",
    ],
    extras_require={"plot": ["matplotlib"], "test": ["pytest", "pytest-xdist"], "ct2": ["ctranslate2>=4.0"]},
    entry_points={"console_scripts": ["fairseq-slt=fairseq_slt.cli.main:main"]},
)

"""imgsim: image similarity at collection scale (VGG16 embeddings, Beam, ScaNN).

The repository keeps the layout of a Dataflow project (``pipelines/``,
``transforms/`` at the top level) but installs everything under the single
``imgsim`` namespace so that generic names such as ``transforms`` never land
in site-packages. Dataflow workers install this file through ``--setup_file``.
"""
from setuptools import find_packages, setup

# Kept in step with constraints.txt (exact pins) and infra/Dockerfile (Beam version).
BEAM_VERSION = "2.77.0"

setup(
    name="imgsim",
    version="0.1.0",
    description="Find similar images in large collections: VGG16 embeddings, Apache Beam, ScaNN.",
    python_requires=">=3.11,<3.12",
    # Every subpackage (imgsim.index, imgsim.explorer, ...), not only the top level: a non-editable
    # install (the Flex Template image) needs them all.
    packages=find_packages(include=["imgsim", "imgsim.*"]) + ["imgsim.pipelines", "imgsim.transforms"],
    package_dir={
        "imgsim": "imgsim",
        "imgsim.pipelines": "pipelines",
        "imgsim.transforms": "transforms",
    },
    install_requires=[
        # scann 1.4.2's TensorFlow ops are built against TF 2.20: TF 2.21 breaks `import scann`.
        "tensorflow-cpu>=2.20,<2.21",
        "scann==1.4.2",
        "numpy>=2,<2.5",
        "pyarrow>=14,<26",
        "Pillow>=10.3",
        "requests>=2.31,<3",
        # robots.txt by RFC 9309 (longest match, Allow wins ties, * and $, percent-encoding).
        "protego>=0.7,<1",
        "google-cloud-storage>=2.14,<4",
    ],
    extras_require={
        # The Beam pipeline (`imgsim run`). Consumers of the index artifact do not need it.
        "pipeline": [f"apache-beam[gcp]=={BEAM_VERSION}"],
        # int8 (and fp32/bf16) inference through OpenVINO: --backend openvino.
        "openvino": ["openvino>=2026.4,<2027", "nncf>=3.4,<4"],
        # Beam on a Dask cluster: --runner imgsim.pipelines.dask_runner.DaskRunner --dask_client_address ...
        "dask": [f"apache-beam[dask]=={BEAM_VERSION}"],
        # `imgsim serve`: the HTTP service for downstream apps (and the explorer with search by image).
        "serve": ["fastapi>=0.115,<1", "uvicorn>=0.30,<1", "python-multipart>=0.0.9"],
        # The browser tests drive Debian's Chromium (/usr/bin/chromium); Playwright downloads no browser.
        # iiif: the IIIF Image API reference implementation, the tests' image server (needs libmagic).
        "test": ["pytest>=8", "pytest-xdist>=3.5", "gcp-storage-emulator>=2024.8", "python-hcl2>=4",
                 "playwright>=1.49,<2", "httpx>=0.27", "iiif>=1.0.10,<2"],  # httpx: FastAPI's TestClient
    },
    # The explorer's page, script and style sheet, copied into every site.
    package_data={"imgsim.explorer": ["static/*"], "imgsim.planning": ["*.json"]},
    entry_points={"console_scripts": ["imgsim=imgsim.cli:console"]},
)

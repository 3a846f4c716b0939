import re
from pathlib import Path

from setuptools import setup

# The version is kept in deposito/__init__.py alone; read, not imported, so
# that setup.py runs before the dependencies are installed.
VERSION = re.search(r'^__version__ = "([^"]+)"$',
                    Path(__file__).with_name("deposito").joinpath("__init__.py").read_text(encoding="utf-8"),
                    re.M).group(1)

setup(
    name="deposito",
    version=VERSION,
    description="A replicated file depot built on Twisted",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=["deposito", "deposito.catalog", "deposito.depot", "deposito.protocols", "deposito.s3", "deposito.splice",
              "twisted.plugins"],
    package_data={"twisted": ["plugins/deposito_plugins.py"]},
    install_requires=[
        "twisted[tls]>=24.3.0",  # ssl: and tls: endpoints for every port
        "attrs>=23.1.0",
        "zope.interface>=6.0",
        "tqdm>=4.66",
        "prometheus_client>=0.20",
        "crc32c>=2.3",  # block checksums: CRC-32C in hardware, about 8x zlib's CRC-32
        # the catalog in PostgreSQL (--catalog postgresql://...): raw cursors, notifications kept while a statement runs
        "psycopg[binary]>=3.2.4",
        "defusedxml>=0.7",  # S3 request bodies: XML without entity or DTD tricks
        "awscrt>=0.23.4",  # S3's CRC-64/NVME checksums (botocore's own lower bound for it)
    ],
    extras_require={
        "test": [
            "pytest>=8.0",
            "pytest-twisted>=1.14",
            "pytest-xdist>=3.5",  # make test runs the tests on as many workers as cores
            "hypothesis>=6.100",
            "mypy>=1.10",
            "mypy-zope>=1.0.5",
            "boto3>=1.34",  # botocore: the reference signer, and S3 XML's parser and serializer, in the tests
            "awscli>=1.32",  # the aws CLI (v1), a real S3 client in the tests (tests/test_s3_tools.py)
        ],
    },
    entry_points={"console_scripts": ["deposito = deposito.cli:command"]},
)

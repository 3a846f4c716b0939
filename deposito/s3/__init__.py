"""The S3-compatible API: Amazon's S3 REST protocol over the same depot.

The object KEY in bucket B is the depot file ``B/KEY``, so S3 tools (boto3,
the aws CLI, rclone) see the same files as the text protocol, the CLI and
HTTP. The package keeps the protocol's parts apart: request signing
(``sigv4``, with its keys in ``keys``), the XML wire format, and the
resources that call the same Depot methods as every other interface.
"""

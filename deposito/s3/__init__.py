"""The S3-compatible API: Amazon's S3 REST protocol over the same depot.

The object KEY in bucket B is the depot file ``B/KEY``, so S3 tools (boto3,
the aws CLI, rclone) see the same files as the text protocol, the CLI and
HTTP. Each concern is a module of its own: S3's error codes (``errors``),
the XML it writes (``xmlwire``) and reads (``xmlread``), request signatures
(``sigv4``, with its keys in ``keys``, ``aws-chunked`` bodies in ``chunked``
and their checksums in ``checksums``). The operations (``gateway``,
``listings``, ``copies``, ``multipart``) call the same Depot methods as every
other interface, so there is one data path.
"""

"""The S3-compatible API (CONTRACT.md section 6): the gateway that lets boto3,
the aws CLI, rclone and other S3 tools store and read depot files unchanged.
Each concern is a module of its own: S3's error codes (``errors``), the XML S3
speaks both ways (``xmlwire``), request signatures (``sigv4``); the resources
call the same Depot methods as the text protocol, so there is one data path.
"""

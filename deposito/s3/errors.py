"""S3's error codes, their HTTP statuses and S3's own messages.

A resource raises ``S3Error("NoSuchKey", key=...)`` and the gateway answers
with ``deposito.s3.xmlwire.error_document``: the same code, status and wording S3 gives, so that
clients which branch on ``Error.Code`` (boto3, the aws CLI, rclone) behave as
they do against Amazon S3.
"""

from __future__ import annotations

from typing import Optional

import attrs

from deposito.errors import (BadArgs, Conflict, DepositoError, NoSpace, NotFound, NoVersion, Precondition, TooLarge,
                             Unavailable)


@attrs.frozen
class ErrorKind:
    """One of S3's error codes: the HTTP status it is sent with and S3's message."""

    status: int
    message: str


ERRORS: dict[str, ErrorKind] = {
    "AccessDenied": ErrorKind(403, "Access Denied"),
    "AccessForbidden": ErrorKind(403, "CORSResponse: CORS is not enabled for this bucket."),
    "AuthorizationHeaderMalformed": ErrorKind(400, "The authorization header is malformed."),
    "AuthorizationQueryParametersError": ErrorKind(400, "Error parsing the X-Amz-Credential parameter."),
    "BadRequest": ErrorKind(400, "Insufficient information. Origin request header needed."),
    "BadDigest": ErrorKind(400, "The Content-MD5 you specified did not match what we received."),
    "BucketAlreadyExists": ErrorKind(
        409, "The requested bucket name is not available. The bucket namespace is shared by all users "
             "of the system. Please select a different name and try again."),
    "BucketAlreadyOwnedByYou": ErrorKind(
        409, "Your previous request to create the named bucket succeeded and you already own it."),
    "BucketNotEmpty": ErrorKind(409, "The bucket you tried to delete is not empty"),
    "EntityTooLarge": ErrorKind(400, "Your proposed upload exceeds the maximum allowed size"),
    "EntityTooSmall": ErrorKind(400, "Your proposed upload is smaller than the minimum allowed object size."),
    "IncompleteBody": ErrorKind(
        400, "You did not provide the number of bytes specified by the Content-Length HTTP header"),
    "InternalError": ErrorKind(500, "We encountered an internal error. Please try again."),
    "InvalidAccessKeyId": ErrorKind(403, "The AWS Access Key Id you provided does not exist in our records."),
    "InvalidArgument": ErrorKind(400, "Invalid Argument"),
    "InvalidBucketName": ErrorKind(400, "The specified bucket is not valid."),
    "InvalidDigest": ErrorKind(400, "The Content-MD5 you specified is not valid."),
    "InvalidPart": ErrorKind(
        400, "One or more of the specified parts could not be found.  The part may not have been "
             "uploaded, or the specified entity tag may not match the part's entity tag."),
    "InvalidPartNumber": ErrorKind(416, "The requested partnumber is not satisfiable"),
    "InvalidPartOrder": ErrorKind(
        400, "The list of parts was not in ascending order. Parts must be ordered by part number."),
    "InvalidRange": ErrorKind(416, "The requested range is not satisfiable"),
    "InvalidRequest": ErrorKind(400, "Invalid Request"),
    "InvalidURI": ErrorKind(400, "Couldn't parse the specified URI."),
    "KeyTooLongError": ErrorKind(400, "Your key is too long"),
    "MalformedXML": ErrorKind(
        400, "The XML you provided was not well-formed or did not validate against our published schema"),
    "MethodNotAllowed": ErrorKind(405, "The specified method is not allowed against this resource."),
    "MetadataTooLarge": ErrorKind(400, "Your metadata headers exceed the maximum allowed metadata size."),
    "MissingContentLength": ErrorKind(411, "You must provide the Content-Length HTTP header."),
    "NoSuchBucket": ErrorKind(404, "The specified bucket does not exist"),
    "NoSuchKey": ErrorKind(404, "The specified key does not exist."),
    "NoSuchVersion": ErrorKind(404, "The specified version does not exist."),
    "NoSuchUpload": ErrorKind(
        404, "The specified upload does not exist. The upload ID may be invalid, or the upload may "
             "have been aborted or completed."),
    "NotImplemented": ErrorKind(501, "A header you provided implies functionality that is not implemented"),
    "PreconditionFailed": ErrorKind(412, "At least one of the pre-conditions you specified did not hold"),
    "ConditionalRequestConflict": ErrorKind(409, "A conflicting operation occurred. If using PutObject you can"
                                                 " retry the request. If using multipart upload you should"
                                                 " initiate another CreateMultipartUpload request and re-upload"
                                                 " each part."),
    "RequestTimeout": ErrorKind(
        400, "Your socket connection to the server was not read from or written to within the timeout period."),
    "RequestTimeTooSkewed": ErrorKind(
        403, "The difference between the request time and the current time is too large."),
    "ServiceUnavailable": ErrorKind(503, "Please reduce your request rate."),
    "SignatureDoesNotMatch": ErrorKind(
        403, "The request signature we calculated does not match the signature you provided. "
             "Check your key and signing method."),
    "SlowDown": ErrorKind(503, "Please reduce your request rate."),
    "XAmzContentSHA256Mismatch": ErrorKind(
        400, "The provided 'x-amz-content-sha256' header does not match what was computed."),
}


# DeleteObject's conditions on size or time (x-amz-if-match-size, -last-modified-time) are refused so.
UNSERVED_CONDITION = "A condition on an object's size or time is not served: make it on its ETag"


class S3Error(Exception):
    """An S3 error answer: ``code`` is one of ``ERRORS``; ``message`` defaults to S3's.

    ``resource`` is the path the request named; ``extra`` are the further
    elements S3 adds for some codes, written in the order given (``Key``,
    ``BucketName``, ``UploadId``, ``ArgumentName``, ``ArgumentValue``, ...).
    """

    def __init__(self, code: str, message: Optional[str] = None, resource: Optional[str] = None,
                 **extra: str) -> None:
        kind = ERRORS[code]  # an unknown code is a bug in the gateway, not a client's fault
        self.code = code
        self.status = kind.status
        self.message = kind.message if message is None else message
        self.resource = resource
        self.extra = extra
        super().__init__(f"{code}: {self.message}")


def s3_error(e: DepositoError) -> S3Error:
    """What S3 answers for a depot's error."""
    if isinstance(e, BadArgs):
        return S3Error("InvalidArgument", e.message or None)
    if isinstance(e, TooLarge):
        return S3Error("EntityTooLarge", e.message or None)
    if isinstance(e, (Unavailable, NoSpace)):
        return S3Error("ServiceUnavailable", str(e))
    if isinstance(e, NotFound):
        return S3Error("NoSuchKey")
    if isinstance(e, NoVersion):
        return S3Error("NoSuchKey")
    if isinstance(e, Conflict):
        return S3Error("ConditionalRequestConflict")
    if isinstance(e, Precondition):
        return S3Error("PreconditionFailed", Condition=e.message)
    return S3Error("InternalError", str(e))

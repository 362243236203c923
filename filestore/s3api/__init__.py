"""The S3-compatible endpoint: apps and tools that speak S3 use filestore unchanged.

`s3.port` turns it on (`filestore serve` answers it in the same worker processes). A bucket is a
top-level namespace of the caller's (`buckets.py`); an object is the filestore file at its
bucket's prefix and its key (`objects.py`, `listing.py`), with the same bytes, queue, plans,
cache, quota and metrics as through `/files/`. Requests are signed with key pairs of the
administrator or of an account (`keys.py`), checked by `sigv4.py` (SigV4 header and presigned
query, SigV2 presigned query), with bodies as the signature says (`auth.py`, `chunked.py`:
aws-chunked, with chunk signatures or a checksum trailer). Errors are S3's XML (`errors.py`).
`app.py` routes a request to its operation.
"""

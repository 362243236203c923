"""The read-through cache: bytes of uploaded files, kept in `data_dir/cache/<path>`.

A GET of a file whose bytes are only in the cloud starts one download per object (single
flight: later readers join it) into a temp file that readers follow while it grows (`fill.py`);
a verified download is installed into the cache area by rename, in a registry transaction that
also records its inode.

Concurrency: fills live in a dict touched only on the event loop's thread; no lock is held
across an await, and no registry transaction spans a remote call.
"""

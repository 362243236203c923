"""The read-through cache: bytes of uploaded files, kept in `data_dir/cache/<path>`.

A GET of a file whose bytes are only in the cloud is answered by `readthrough.py`: it joins the
object's running download or starts one (single flight in a process, `lock.py` across processes),
into a temp file that readers follow while it grows (`fill.py`); a verified download is linked into
the cache area and recorded in the index (`registry/cache.py`) in one registry transaction. What
the cache should not keep or wait for streams straight from the cloud (`passthrough.py`). Reads
note access times and statistics in memory (`usage.py`); `gc.py` keeps the area within its budget
by sampled LRU; `reconcile.py` repairs area and index after a crash.

Concurrency: fills live in a dict touched only on the event loop's thread; no lock is held
across an await, and no registry transaction spans a remote call.
"""

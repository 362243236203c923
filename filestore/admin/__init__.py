"""The admin page (`views.py`) and its JSON API (`api.py`), under `/admin`."""

from . import api, views

routes = [*api.routes, *views.routes]

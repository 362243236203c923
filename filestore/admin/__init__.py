"""The admin page (`views.py`) and its JSON API (`api.py`), under `/admin`."""

from . import accounts_views, api, charts_views, views

routes = [*api.routes, *views.routes, *accounts_views.routes, *charts_views.routes]
